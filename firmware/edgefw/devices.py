# A device = a register map + a slave id on a bus + a role in the site. It holds the
# latest decoded value of each point and when it arrived; the bus master feeds it.
from protocols import regmap

_maps = {}


def get_map(name):
    """Register maps are shared by the devices that use them (RAM)."""
    m = _maps.get(name)
    if m is None:
        m = regmap.load(name)
        _maps[name] = m
    return m


class Device:
    def __init__(self, cfg, m):
        self.name = cfg["name"]
        self.role = cfg["role"]
        self.slave = cfg["slave"]
        self.bus = cfg["bus"]
        self.period_ms = cfg["period_ms"]
        self.feeds = cfg.get("pcs")            # bms: the PCS it feeds (None: all of them)
        self.cap_wh = cfg.get("capacity_wh")   # bms: SOC weight (None: equal weights)
        self.rating_w = cfg.get("rating_w")    # pcs: split weight, cap (None: equal)
        self.map = m
        names = cfg.get("points")
        self.names = names   # None = every point of the map
        self.reads = regmap.plan(m, names) if self.period_ms else []
        self.values = {}     # point -> latest int
        self.t = {}          # point -> site ms ticks it was read
        self.station = None  # set by BusMaster.add (stats, stale flag)
        self.polled = False  # a poll finished since the owner last looked

    def on_read(self, fc, addr, values, now):
        vals = regmap.decode(self.map, fc, addr, values)
        v = self.values
        t = self.t
        for k in vals:
            v[k] = vals[k]
            t[k] = now

    def polls(self, name):
        """True when the read plan covers this point (safety: a left-out alarm trips)."""
        if not self.period_ms or name not in self.map.points:
            return False
        return self.names is None or name in self.names

    def on_poll(self, ok, now):
        self.polled = True

    def stale(self):
        s = self.station
        return s is None or s.stale

    def writes(self, point, value):
        """[(fc, addr, values)] that set a writable point (RegMapError if it is not)."""
        return regmap.encode_write(self.map, point, value)


def check(cfg):
    """Config check for config.boot: every map loads and every named point exists."""
    errs = []
    devs = cfg.get("devices") or []
    for i in range(len(devs)):
        d = devs[i]
        try:
            m = get_map(d["map"])
        except Exception as e:  # RegMapError, OSError: name the device and the problem
            errs.append("devices[%d].map: %s" % (i, e))
            continue
        pts = d.get("points")
        if pts:
            for p in pts:
                if p not in m.points:
                    errs.append("devices[%d].points: %r is not in map %s" % (i, p, d["map"]))
            if errs:
                continue
        try:
            regmap.plan(m, pts)
        except Exception as e:
            errs.append("devices[%d].points: %s" % (i, e))
    return errs


def build(cfg):
    """Devices of a validated, checked config, in config order."""
    out = []
    for d in cfg.get("devices") or []:
        out.append(Device(d, get_map(d["map"])))
    return out
