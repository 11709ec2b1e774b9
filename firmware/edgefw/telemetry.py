# The telemetry record (every status_s: site values, the decision, the green headroom,
# the energy counters and hourly ledger) and where it goes: the link (and the headroom
# topic), and a console line unless the REPL console is in use.
from edgefw import clock
from edgefw.nulls import NO_ENERGY, NO_LINK

try:
    from edgefw import dispatch
except ImportError:
    dispatch = None

_SITE_KEYS = ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w")


class Telemetry:
    def __init__(self, cfg, site, safety, ctl, pv, err):
        self.cfg = cfg
        self.site = site
        self.safety = safety
        self.ctl = ctl
        self.pv = pv
        self.err = err
        self.link = NO_LINK
        self.energy = NO_ENERGY
        self.seq = 0

    def record(self):
        v = self.site.v
        c = self.ctl
        rec = {"seq": self.seq, "ts": clock.time(), "state": self.link.state,
               "sp_w": c.sp_w, "curtail_w": c.curtail_w, "pv_limit_w": self.pv.limit_w,
               "safety": self.safety.reason if self.safety.tripped else ""}
        # ccl_w/dcl_w: the BMS limits, so schedulers can rebuild the headroom figure
        for k in _SITE_KEYS:
            rec[k] = v[k]
        p = c.params
        if p is not None and self.site.ok("pv_w", "it_w", "soc_cpct"):
            # curtailed PV is green headroom too: the available PV behind a limit
            pv = self.pv.avail_w if self.pv.avail_w is not None else v["pv_w"]
            h = dispatch.headroom(p, v["soc_cpct"], pv, v["it_w"], v["aux_w"] or 0,
                                  v["dcl_w"])
            rec["headroom_w"] = h[0]
            rec["headroom_1h_w"] = h[1]
        try:
            e = self.energy.counters()
            if e is not None:
                rec["e"] = e
                rec["g"] = self.energy.hourly(self.seq)  # hourly green ledger
        except Exception as x:
            self.err("energy telemetry: %r" % (x,))
        self.seq += 1
        return rec

    def publish(self):
        rec = self.record()
        try:
            self.link.telemetry(rec)
            if "headroom_w" in rec:
                self.link.headroom({"headroom_w": rec["headroom_w"],
                                    "headroom_1h_w": rec["headroom_1h_w"]})
        except Exception as e:
            self.err("link telemetry: %s" % e)
        if not self.cfg.get("console"):
            print("edgegw t=%d grid=%s pv=%s it=%s bat=%s soc=%s sp=%d %s" % (
                rec["ts"], rec["grid_w"], rec["pv_w"], rec["it_w"], rec["bat_w"],
                rec["soc_cpct"], rec["sp_w"], self.ctl.sp_src))
