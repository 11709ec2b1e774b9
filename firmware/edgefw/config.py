# The gateway's one JSON config file: validation with errors naming the field, atomic
# writes (temp file + rename, CRC-32 trailer), and boot fallback: config.json ->
# the last good copy -> the factory default. A new config.json runs on trial until the
# application confirms it (confirm()); a restart while on trial falls back to the last
# good copy. See docs/config.md for the schema and the trial boot.
import gc
import json
import os

from edgefw import hal
from edgefw import store
from edgefw.store import write_atomic, write_json  # noqa: F401 (config.write_*: callers, REPL)

PATH = "config.json"
LAST_GOOD = "config.last_good.json"
TRIAL = "config.trial.json"  # marker: which config.json is on trial, boots it was given
TRIALS = 1                   # boots a new config gets; a restart before confirm() = failed

ROLES = ("bms", "pcs", "pv_meter", "grid_meter", "load_meter", "aux_meter", "pv_inverter")
# the others may repeat: meters are summed, bms packs and PCS aggregated (site.py,
# pcsgroup.py; docs/config.md "Several packs and PCS"); pv_inverter: one PV inverter the
# gateway limits (curtailment on a zero-export site, edgefw/pvlimit.py)
SINGLE_ROLES = ("grid_meter", "pv_inverter")
PACK_TRIPS = ("site", "pcs")
MAX_WH = 10000000  # capacity_wh over all packs (site.py's energy-weighted SOC stays < 2**30)
PARITIES = ("N", "E", "O")


def default():
    """Factory default: boots on any board; the typical site on two RS-485 buses."""
    b0 = dict(hal.DEFAULT_BUSES[0])
    b1 = dict(hal.DEFAULT_BUSES[1])
    return {
        "version": 1,
        "device_id": "edgegw-0001",
        "buses": [b0, b1],
        "devices": [
            {"name": "pcs", "role": "pcs", "map": "sunspec_pcs", "slave": 1, "bus": "bus0",
             "period_ms": 1000},
            {"name": "grid", "role": "grid_meter", "map": "sdm630", "slave": 2, "bus": "bus0",
             "period_ms": 1000},
            {"name": "pv", "role": "pv_meter", "map": "sdm630", "slave": 3, "bus": "bus0",
             "period_ms": 1000},
            {"name": "it", "role": "load_meter", "map": "sdm630", "slave": 4, "bus": "bus0",
             "period_ms": 1000},
            {"name": "bms", "role": "bms", "map": "seplos_v3", "slave": 1, "bus": "bus1",
             "period_ms": 1000},
        ],
        "site": {},
        "limits": {},
        "safety": {},
        "control": {},
        "link": {},
    }


# ---- validation -------------------------------------------------------------

class _V:
    """Collects "field: problem" strings."""

    def __init__(self):
        self.errs = []

    def err(self, field, msg):
        self.errs.append("%s: %s" % (field, msg))

    def int_(self, d, key, field, lo, hi, dflt=None, null=False):
        v = d.get(key, dflt)
        f = field + key
        if v is None:
            if null:
                return None
            self.err(f, "missing (integer %d..%d)" % (lo, hi))
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            self.err(f, "%r is not an integer" % (v,))
            return None
        if v < lo or v > hi:
            self.err(f, "%d out of range %d..%d" % (v, lo, hi))
            return None
        return v

    def str_(self, d, key, field, choices=None, dflt=None, maxlen=64):
        v = d.get(key, dflt)
        f = field + key
        if not isinstance(v, str) or not v:
            self.err(f, "missing (text)" if v is None else "%r is not text" % (v,))
            return None
        if len(v) > maxlen:
            self.err(f, "longer than %d characters" % maxlen)
            return None
        if choices is not None and v not in choices:
            self.err(f, "%r is not one of %s" % (v, ", ".join(choices)))
            return None
        return v

    def dict_(self, d, key, field):
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.err(field + key, "must be an object")
            return {}
        return v


def _ident_ok(s):
    for c in s:
        if not (c.isalpha() or c.isdigit() or c in "-_"):
            return False
    return True


UNCHECKABLE = "config: cannot be checked"


def _failed(what, e):
    return ["%s (%s %s: %s)" % (UNCHECKABLE, what, type(e).__name__, e)]


def validate(cfg):
    """Check a parsed config; returns a list of "field: problem" strings ([] = valid).
    Fills in defaults in place so the rest of the firmware reads plain values. Never
    raises, whatever JSON value cfg is: a fault in a check is an error too (a config
    nobody could check does not run; the boot falls back to the last good copy)."""
    try:
        return _validate(cfg)
    except Exception as e:
        return _failed("validate", e)


def _validate(cfg):
    v = _V()
    if not isinstance(cfg, dict):
        return ["config: must be a JSON object"]
    _top(v, cfg)
    names = _buses(v, cfg)
    _devices(v, cfg, names)
    _limits(v, cfg)
    _safety(v, cfg)
    _control(v, cfg)
    for k in ("site", "link", "net"):
        cfg[k] = v.dict_(cfg, k, "")
    site = cfg["site"]
    if site.get("tariff") is not None:
        # the time-of-use / demand tariff (edgefw/tariff.py): every problem, named
        from edgefw import tariff
        v.errs.extend(tariff.validate(site["tariff"], "site.tariff",
                                      site.get("export_allowed") is True)[1])
    net = cfg["net"]
    for k in ("ssid", "psk"):  # ESP32 WLAN station (hal_esp32.net_connect)
        if net.get(k) is not None:
            v.str_(net, k, "net.", maxlen=64)
    return v.errs


def _top(v, cfg):
    for k in cfg:
        if k not in ("version", "device_id", "buses", "devices", "site", "limits", "safety",
                     "control", "link", "net", "status_s", "wdt_ms", "console", "note",
                     "trial_s"):
            v.err(k, "unknown section (typo?)")
    v.int_(cfg, "version", "", 1, 1, dflt=1)
    did = v.str_(cfg, "device_id", "", dflt="edgegw-0001", maxlen=32)
    if did and not _ident_ok(did):
        v.err("device_id", "%r may hold only letters, digits, - and _" % did)
    cfg.setdefault("device_id", did)
    cfg["status_s"] = v.int_(cfg, "status_s", "", 0, 3600, dflt=10)
    cfg["wdt_ms"] = v.int_(cfg, "wdt_ms", "", 0, 60000, dflt=30000)
    cfg["trial_s"] = v.int_(cfg, "trial_s", "", 10, 86400, dflt=600)
    if cfg["wdt_ms"] and cfg["wdt_ms"] < 1000:
        v.err("wdt_ms", "%d too short (0 = off, else >= 1000)" % cfg["wdt_ms"])
    con = cfg.get("console", hal.CONSOLE)
    if not isinstance(con, bool):
        v.err("console", "%r is not true/false" % (con,))
    cfg["console"] = con


def _buses(v, cfg):
    """buses[]; returns the valid bus names (devices[].bus names one of these)."""
    buses = cfg.get("buses")
    names = []
    if not isinstance(buses, list) or not buses:
        v.err("buses", "must be a non-empty list")
        buses = []
    elif len(buses) > 4:
        v.err("buses", "%d buses, at most 4" % len(buses))
    for i in range(len(buses)):
        b = buses[i]
        f = "buses[%d]." % i
        if not isinstance(b, dict):
            v.err(f[:-1], "must be an object")
            continue
        n = v.str_(b, "name", f, dflt="bus%d" % i, maxlen=16)
        b["name"] = n
        if n in names:
            v.err(f + "name", "%r used twice" % n)
        if n is not None:
            names.append(n)  # only text: devices[].bus names one of these
        p = b.get("port")
        if not (isinstance(p, str) and p) and not (isinstance(p, int) and not isinstance(p, bool)):
            v.err(f + "port", "missing (a path, tcp:HOST:PORT, uartN or a UART number)")
        b["baud"] = v.int_(b, "baud", f, 300, 1000000, dflt=9600)
        b["parity"] = v.str_(b, "parity", f, PARITIES, dflt="N")
        b["stop"] = v.int_(b, "stop", f, 1, 2, dflt=1)
        for k in ("de_pin", "tx", "rx"):
            b[k] = v.int_(b, k, f, 0, 48, null=True)
        b["timeout_ms"] = v.int_(b, "timeout_ms", f, 10, 5000, dflt=200)
        b["retries"] = v.int_(b, "retries", f, 0, 5, dflt=1)
    return names


def _devices(v, cfg, names):
    devs = cfg.get("devices")
    if devs is None:
        devs = cfg["devices"] = []
    if not isinstance(devs, list):
        v.err("devices", "must be a list")
        devs = []
    elif len(devs) > 16:
        v.err("devices", "%d devices, at most 16" % len(devs))
    dnames = []
    seen = {}
    for i in range(len(devs)):
        d = devs[i]
        f = "devices[%d]." % i
        if not isinstance(d, dict):
            v.err(f[:-1], "must be an object")
            continue
        role = v.str_(d, "role", f, ROLES)
        n = v.str_(d, "name", f, dflt=role or "dev%d" % i, maxlen=16)
        d["name"] = n
        if n in dnames:
            v.err(f + "name", "%r used twice" % n)
        dnames.append(n)
        if role in SINGLE_ROLES:
            if role in seen:
                v.err(f + "role", "a second %s (devices[%d] is one; only one allowed)"
                      % (role, seen[role]))
            seen[role] = i
        v.str_(d, "map", f, maxlen=40)
        slave = v.int_(d, "slave", f, 1, 247)
        bus = d.get("bus", names[0] if names else None)
        if isinstance(bus, int) and not isinstance(bus, bool):
            if 0 <= bus < len(names):
                bus = names[bus]
            else:
                v.err(f + "bus", "index %d out of range 0..%d" % (bus, len(names) - 1))
        elif bus not in names:
            v.err(f + "bus", "%r is not a bus name (%s)"
                  % (bus, ", ".join(names) if names else "no valid bus"))
        d["bus"] = bus
        for j in range(i):
            o = devs[j]
            if isinstance(o, dict) and o.get("bus") == bus and o.get("slave") == slave \
                    and slave is not None:
                v.err(f + "slave", "%d already used on %s by devices[%d]" % (slave, bus, j))
        d["period_ms"] = v.int_(d, "period_ms", f, 0, 3600000, dflt=1000)
        pts = d.get("points")
        if pts is not None and (not isinstance(pts, list) or not pts
                                or not all(isinstance(x, str) for x in pts)):
            v.err(f + "points", "must be a non-empty list of point names")
        # optional, left out of d when absent (a one-pack site's config stays as it was)
        if role == "bms":
            if d.get("capacity_wh") is not None:
                d["capacity_wh"] = v.int_(d, "capacity_wh", f, 1, MAX_WH)
            if d.get("pcs") is not None:
                v.str_(d, "pcs", f, maxlen=16)
        elif role == "pcs" and d.get("rating_w") is not None:
            d["rating_w"] = v.int_(d, "rating_w", f, 1, 10000000)


def _limits(v, cfg):
    lim = v.dict_(cfg, "limits", "")
    cfg["limits"] = lim
    lim["pcs_charge_max_w"] = v.int_(lim, "pcs_charge_max_w", "limits.", 0, 10000000, dflt=5000)
    lim["pcs_discharge_max_w"] = v.int_(lim, "pcs_discharge_max_w", "limits.", 0, 10000000,
                                        dflt=5000)
    lim["soc_min_cpct"] = v.int_(lim, "soc_min_cpct", "limits.", 0, 10000, dflt=1000)
    lim["soc_max_cpct"] = v.int_(lim, "soc_max_cpct", "limits.", 0, 10000, dflt=10000)
    if lim["soc_min_cpct"] is not None and lim["soc_max_cpct"] is not None \
            and lim["soc_min_cpct"] > lim["soc_max_cpct"]:
        v.err("limits.soc_min_cpct", "%d above soc_max_cpct %d"
              % (lim["soc_min_cpct"], lim["soc_max_cpct"]))
    lim["export_max_w"] = v.int_(lim, "export_max_w", "limits.", 0, 10000000, null=True)
    lim["pack_trip"] = v.str_(lim, "pack_trip", "limits.", PACK_TRIPS, dflt="site")
    devs = cfg.get("devices")
    _packs(v, devs if isinstance(devs, list) else [], lim["pack_trip"])
    lim["import_max_w"] = v.int_(lim, "import_max_w", "limits.", 0, 10000000, null=True)


def _safety(v, cfg):
    saf = v.dict_(cfg, "safety", "")
    cfg["safety"] = saf
    saf["clean_s"] = v.int_(saf, "clean_s", "safety.", 0, 86400, dflt=30)
    saf["stale_polls"] = v.int_(saf, "stale_polls", "safety.", 1, 100, dflt=3)
    for k in ("trip_on_alarm", "trip_on_protect", "trip_on_stale", "trip_on_pcs_fault"):
        x = saf.get(k, True)
        if not isinstance(x, bool):
            v.err("safety." + k, "%r is not true/false" % (x,))
        saf[k] = x


def _control(v, cfg):
    ctl = v.dict_(cfg, "control", "")
    cfg["control"] = ctl
    ctl["period_ms"] = v.int_(ctl, "period_ms", "control.", 100, 60000, dflt=1000)
    ctl["refresh_ms"] = v.int_(ctl, "refresh_ms", "control.", 100, 600000, dflt=10000)
    ctl["mode"] = v.str_(ctl, "mode", "control.", ("auto", "hold", "off"), dflt="auto")
    ctl["hold_w"] = v.int_(ctl, "hold_w", "control.", -10000000, 10000000, dflt=0)


def _packs(v, devs, trip):
    """Several bms / pcs: each pack's pcs names a PCS; capacity_wh on every pack or none
    (the same for rating_w); pack_trip "pcs" with several PCS needs each pack's PCS."""
    pcs = []
    packs = []
    for i in range(len(devs)):
        d = devs[i]
        if isinstance(d, dict):
            if d.get("role") == "pcs":
                pcs.append((i, d))
            elif d.get("role") == "bms":
                packs.append((i, d))
    names = [d.get("name") for _, d in pcs]
    for what, grp in (("capacity_wh", packs), ("rating_w", pcs)):
        have = [i for i, d in grp if d.get(what) is not None]
        if have and len(have) != len(grp):
            i = [i for i, d in grp if d.get(what) is None][0]
            v.err("devices[%d].%s" % (i, what), "missing: set on every %s or none (devices[%d] "
                  "has one)" % (grp[0][1]["role"], have[0]))
    tot = 0
    for i, d in packs:
        tot += d.get("capacity_wh") or 0
        p = d.get("pcs")
        if p is not None and p not in names:
            v.err("devices[%d].pcs" % i, "%r is not a pcs device (%s)"
                  % (p, ", ".join([str(n) for n in names]) or "none configured"))
        elif p is None and len(pcs) > 1 and trip == "pcs":
            v.err("devices[%d].pcs" % i, "missing: limits.pack_trip \"pcs\" with %d PCS "
                  "needs the PCS each pack feeds" % len(pcs))
    if tot > MAX_WH:
        v.err("devices", "capacity_wh adds up to %d, at most %d" % (tot, MAX_WH))
    tot = 0
    for i, d in pcs:
        tot += d.get("rating_w") or 0
    if tot > 10000000:  # pcssplit weights: frac(rating, sum) needs sum <= 10**7
        v.err("devices", "rating_w adds up to %d, at most 10000000" % tot)
    mapped = [i for i, d in packs if d.get("pcs") is not None]
    if mapped and len(mapped) != len(packs) and len(pcs) > 1:
        i = [i for i, d in packs if d.get("pcs") is None][0]
        v.err("devices[%d].pcs" % i, "missing: with several PCS every pack names its pcs "
              "or none does")


# ---- files ------------------------------------------------------------------

def parse(text):
    """Parse file text (JSON, optional CRC trailer); returns (cfg or None, errors)."""
    text, want, got = store.unseal(text)
    if want is not None and want != got:
        return None, ["checksum: file says %s, content gives %s (torn or edited write)"
                      % (want, got)]
    try:
        cfg = json.loads(text)
    except ValueError as e:
        return None, ["json: not valid JSON (%s)" % (e.args[0] if e.args else "syntax error")]
    except Exception as e:  # nested too deep (RecursionError), too big (MemoryError)
        return None, ["json: cannot be read (%s)" % type(e).__name__]
    return cfg, []


def read(path):
    """Read, parse and validate a config file: (cfg or None, errors)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None, ["file: %s not found" % path]
    except ValueError:  # not UTF-8 (UnicodeError)
        return None, ["file: %s is not UTF-8 text" % path]
    except MemoryError:
        return None, ["file: %s too big to read" % path]
    cfg, errs = parse(text)
    if not errs:
        errs = validate(cfg)  # also a file holding JSON null
    return (None if errs else cfg), errs


def dumps(cfg):
    """File text for cfg: JSON plus the CRC-32 trailer line."""
    return store.seal(json.dumps(cfg))


def file_crc(path):
    """"%08x" CRC-32 of a file's whole text (what store.crc(_text(path)) gives), read in
    pieces; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return "%08x" % store.file_crc(f)[0]
    except OSError:
        return None


def save(cfg, path=PATH):
    """Validate then write atomically; returns the errors (nothing written if any)."""
    errs = validate(cfg)
    if not errs:
        write_json(path, cfg, True)
    return errs


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# the trial of this boot: None, or the CRC (hex) of the config.json text on trial
_trial = None
_status = {"state": "none"}


def _marker():
    """(exists, {"crc", "tries"} or None) of the trial marker."""
    text = _text(TRIAL)
    if text is None:
        return False, None
    m, errs = parse(text)
    if errs or not isinstance(m, dict) or not isinstance(m.get("crc"), str) \
            or not isinstance(m.get("tries"), int):
        return True, None
    return True, m


def trial_status():
    """{"state": "none"|"trial"|"confirmed"|"failed"|"changed", ...} for app.status()."""
    return dict(_status)


def on_trial():
    return _trial is not None


def confirm():
    """The application has run the config on trial long enough (trial_s of healthy running:
    every device polled, no loop errors): make it the last good copy. True if promoted."""
    global _trial
    if _trial is None:
        return False
    if file_crc(PATH) != _trial:
        # a newer config.json was written during the trial: it gets its own trial at the
        # next boot; the one running now is not on flash any more to be promoted
        _trial = None
        _status["state"] = "changed"
        return False
    store.copy(PATH, LAST_GOOD)
    _remove(TRIAL)
    _trial = None
    _status["state"] = "confirmed"
    return True


def _choose(path, check, report):
    if path is None:
        cfg = default()
        errs = validate(cfg)
    else:
        cfg, errs = read(path)
    if not errs and check is not None:
        try:
            errs = check(cfg)
        except Exception as e:  # a check that failed: this config cannot be trusted
            errs = _failed("check", e)
    for e in errs:
        report.append("%s: %s" % (path or "factory default", e))
    return None if errs else cfg


def boot(check=None):
    """Choose the config to run. check(cfg) may add errors (unknown maps, dispatch
    parameters). Returns (cfg, source, errors). Order:
    - config.json if valid and the same as the last good copy (confirmed earlier);
    - config.json if valid and new: on trial (marker written first; confirm() promotes it);
      with no last good copy at all it is taken as the last good copy at once;
    - config.json on trial again after a restart (TRIALS used up): trial failed, reported,
      the last good copy runs (config.json still, if the last good copy is unusable);
    - the last good copy if config.json is invalid, else the factory default."""
    global _trial
    _trial = None
    _status.clear()
    _status["state"] = "none"
    report = []
    cfg = _choose(PATH, check, report)
    failed = None
    if cfg is not None:
        text = _text(PATH) or ""
        good = _text(LAST_GOOD)
        if text == good:
            _status["state"] = "confirmed"
            if _text(TRIAL) is not None:
                _remove(TRIAL)  # a trial of another config that lost
            return cfg, PATH, report
        if good is None:
            # the first config of this gateway: nothing but the factory default (which fits
            # no real site) to fall back to, so it is the last good copy from now on
            try:
                write_atomic(LAST_GOOD, text)
            except OSError as e:
                report.append("%s: could not be written (%s)" % (LAST_GOOD, e))
            _status["state"] = "confirmed"
            return cfg, PATH, report
        crc = file_crc(PATH) or "%08x" % store.crc(text)  # as confirm() reads it
        exists, m = _marker()
        if m is not None and m["crc"] == crc:
            tries = m["tries"]
        elif exists and m is None:
            tries = TRIALS  # unreadable marker: cannot tell how often it ran, fail closed
        else:
            tries = 0
        if tries < TRIALS:
            write_atomic(TRIAL, dumps({"crc": crc, "tries": tries + 1}))
            _trial = crc
            _status["state"] = "trial"
            _status["tries"] = tries + 1
            return cfg, PATH, report
        if m is None:
            write_atomic(TRIAL, dumps({"crc": crc, "tries": tries}))
        why = ("%s: trial failed: the gateway restarted %d time(s) while this config was on "
               "trial, before it was confirmed (power cut, crash or watchdog); it runs again "
               "only if a new config is written" % (PATH, tries))
        report.append(why)
        _status["state"] = "failed"
        _status["why"] = why
        failed = cfg
    for path in (LAST_GOOD, None):
        if failed is not None and path is None:
            # the last good copy is unusable: the config that failed its trial still
            # validated and was made for this site, unlike the factory default
            report.append("%s: runs although its trial failed (no usable last good copy)"
                          % PATH)
            return failed, PATH, report
        c = _choose(path, check, report)
        if c is not None:
            return c, (path or "factory default"), report
    return _bare_default(report)


def _bare_default(report):
    """The factory default failed the check (e.g. maps missing): run it without devices
    (or, when not even that can be filled in, without buses)."""
    cfg = default()
    cfg["devices"] = []
    errs = validate(cfg)
    if errs:
        # not even that could be filled in (out of memory while checking): collect and
        # fill in one without buses, so no part reads a bus field the check did not set
        gc.collect()
        cfg = default()
        cfg["devices"] = []
        cfg["buses"] = []
        validate(cfg)  # fills in the rest; its one error is the empty bus list
        for e in errs:
            report.append("factory default: %s" % e)
        report.append("factory default: runs without buses (check free memory)")
        return cfg, "factory default without buses", report
    return cfg, "factory default without devices", report
