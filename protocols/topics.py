# MQTT topic names and payload builders/validators shared by the gateway firmware and the
# host tools (cloud stand-in, tracker, collectors). Spec: docs/mqtt.md. Runs on MicroPython.
# All values are integers with the unit in the name (_w W, _cpct 0.01 %, _s seconds).

PREFIX = "edgegw"

# gateway -> cloud
TELEMETRY = "telemetry"
STATUS = "status"        # retained; the broker publishes the "offline" will
EVENTS = "events"
ACK = "ack"
HEADROOM = "headroom"    # retained, for compute schedulers
# cloud / tracker -> gateway (signed)
CMD_SETPOINT = "cmd/setpoint"
CMD_SCHEDULE = "cmd/schedule"
CMD_CONFIG = "cmd/config"
CMD_TARIFF = "cmd/tariff"      # the site tariff until exp (then the configured one)
FORECAST = "compute/forecast"
# firmware update (docs/ota.md): the signed offer is a command; chunks answer the
# gateway's requests (ota/want) and are checked by the offer's sha256 per file
OTA_OFFER = "ota/offer"
OTA_CHUNK = "ota/chunk"
OTA_WANT = "ota/want"        # gateway -> host: {"version", "f", "o"} send me this chunk
OTA_STATUS = "ota/status"    # gateway -> host, retained: the last OTA step

# topic leaf -> command kind (the kind is signed with the command, see edgefw/auth.py)
COMMANDS = {CMD_SETPOINT: "setpoint", CMD_SCHEDULE: "schedule", CMD_CONFIG: "config",
            FORECAST: "forecast", OTA_OFFER: "ota", CMD_TARIFF: "tariff"}

STATES = ("ONLINE", "GRACE", "FALLBACK", "RECOVERING")

# ack reasons beyond those of edgefw/auth.py (ok, malformed, unsigned, bad_sig, stale,
# replayed, no_clock, too_old, no_key)
OUT_OF_BOUNDS = "out_of_bounds"
INVALID = "invalid"

MAX_WINDOWS = 48     # schedule windows (as Victron's Dynamic ESS)
MAX_FC_STEPS = 288   # forecast points the gateway keeps
P_ABS_MAX_W = 100000000  # 100 MW: anything beyond is a unit error


def topic(device_id, leaf):
    return "%s/%s/%s" % (PREFIX, device_id, leaf)


def split(t):
    """'edgegw/<id>/<leaf...>' -> (id, leaf) or (None, None)."""
    p = t.split("/", 2)
    if len(p) != 3 or p[0] != PREFIX or not p[1]:
        return None, None
    return p[1], p[2]


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def need_int(d, k, lo, hi, errs, pre=""):
    """d[k] if an integer lo..hi, else None with the error (field named) in errs."""
    v = d.get(k)
    if not _int(v):
        errs.append("%s%s: %r is not an integer" % (pre, k, v))
        return None
    if v < lo or v > hi:
        errs.append("%s%s: %d out of range %d..%d" % (pre, k, v, lo, hi))
        return None
    return v


# ---- builders (unsigned; sign with edgefw.auth.sign) ----------------------------------

def setpoint_cmd(seq, ts, exp, p_w):
    return {"seq": seq, "ts": ts, "exp": exp, "p_w": p_w}


def schedule_cmd(seq, ts, exp, windows):
    return {"seq": seq, "ts": ts, "exp": exp, "windows": windows}


def config_cmd(seq, ts, exp, config):
    return {"seq": seq, "ts": ts, "exp": exp, "config": config}


def tariff_cmd(seq, ts, exp, tariff):
    """tariff: a site.tariff object (docs/config.md), or None: the configured one again."""
    return {"seq": seq, "ts": ts, "exp": exp, "tariff": tariff}


def ack(seq, ts, kind, ok, reason, state, detail=None):
    d = {"seq": seq, "ts": ts, "kind": kind, "ok": ok, "reason": reason, "state": state}
    if detail:
        d["detail"] = detail
    return d


def status(online, ts, boot=0):
    return {"status": "online" if online else "offline", "ts": ts, "boot": boot}


def event(seq, ts, kind, data=None):
    d = {"seq": seq, "ts": ts, "kind": kind}
    if data:
        for k in data:
            if k not in d:
                d[k] = data[k]
    return d


# ---- validators: list of "field: problem" ([] = fine) ---------------------------------

def check_setpoint(d, lo_w=-P_ABS_MAX_W, hi_w=P_ABS_MAX_W):
    errs = []
    v = d.get("p_w")
    if not _int(v):
        errs.append("p_w: %r is not an integer (W, + = discharge)" % (v,))
    elif v < lo_w or v > hi_w:
        errs.append("p_w: %d out of bounds %d..%d" % (v, lo_w, hi_w))
    return errs


def check_schedule(d):
    errs = []
    w = d.get("windows")
    if not isinstance(w, list) or len(w) > MAX_WINDOWS:
        return ["windows: need a list of at most %d windows" % MAX_WINDOWS]
    prev = None
    for i in range(len(w)):
        x = w[i]
        pre = "windows[%d]." % i
        if not isinstance(x, dict):
            errs.append(pre[:-1] + ": must be an object")
            continue
        for k in x:
            if k not in ("t0", "t1", "soc_cpct", "pmin_w", "pmax_w", "aim_w", "exp"):
                errs.append(pre + k + ": unknown field")
        t0 = need_int(x, "t0", 0, 1 << 40, errs, pre)
        t1 = need_int(x, "t1", 0, 1 << 40, errs, pre)
        if t0 is not None and t1 is not None:
            if t1 <= t0:
                errs.append(pre + "t1: %d not after t0 %d" % (t1, t0))
            if prev is not None and t0 < prev:
                errs.append(pre + "t0: overlaps the previous window (sorted, no overlap)")
            prev = t1
        if "soc_cpct" in x:
            need_int(x, "soc_cpct", 0, 10000, errs, pre)
        if "aim_w" in x:  # zero-export aim inside the window (never into export)
            need_int(x, "aim_w", 0, 1000000, errs, pre)
        if "exp" in x:  # a window may expire before the command does (dispatch honours it)
            need_int(x, "exp", 0, 1 << 40, errs, pre)
        lo = need_int(x, "pmin_w", -P_ABS_MAX_W, P_ABS_MAX_W, errs, pre) if "pmin_w" in x \
            else None
        hi = need_int(x, "pmax_w", -P_ABS_MAX_W, P_ABS_MAX_W, errs, pre) if "pmax_w" in x \
            else None
        if lo is not None and hi is not None and lo > hi:
            errs.append(pre + "pmin_w: %d above pmax_w %d" % (lo, hi))
    return errs


def _watts(d, key, errs):
    lw = d.get(key)
    if not isinstance(lw, list) or not 1 <= len(lw) <= 1440:
        errs.append("%s: need a list of 1..1440 W values" % key)
        return
    for i in range(len(lw)):
        if not _int(lw[i]) or lw[i] < 0 or lw[i] > P_ABS_MAX_W:
            errs.append("%s[%d]: %r is not W >= 0" % (key, i, lw[i]))
            return


def check_forecast(d):
    errs = []
    need_int(d, "t0", 0, 1 << 40, errs)
    need_int(d, "step_s", 60, 3600, errs)  # what dispatch.set_forecast takes
    _watts(d, "load_w", errs)
    # optional (the cloud's PV and aux forecasts on the same steps; used until exp)
    for k in ("pv_w", "aux_w"):
        if d.get(k) is not None:
            _watts(d, k, errs)
    if "measured_w" in d and d["measured_w"] is not None:
        need_int(d, "measured_w", 0, P_ABS_MAX_W, errs)
    return errs


def check_config(d):
    c = d.get("config")
    if not isinstance(c, dict):
        return ["config: must be an object (the whole gateway config)"]
    return []


def check_tariff(d):
    # the shape only: the gateway checks the tariff itself (edgefw/tariff.py validate,
    # which knows whether the site may export)
    if "tariff" not in d or not (d["tariff"] is None or isinstance(d["tariff"], dict)):
        return ["tariff: must be an object (site.tariff, docs/config.md) or null"]
    return []


OTA_MAX_CHUNK = 4096   # raw bytes a chunk carries at most (gateway RAM bound)
OTA_MAX_FILES = 96
OTA_MAX_FILE = 262144
_PATH_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./"


def _ota_path_ok(p):
    if not isinstance(p, str) or not 0 < len(p) <= 64 or p[0] in "./" or ".." in p:
        return False
    for c in p:
        if c not in _PATH_OK:
            return False
    return True


def _ota_name_ok(v):
    return isinstance(v, str) and 0 < len(v) <= 32 and _ota_path_ok(v) and "/" not in v


def check_ota_offer(d):
    """A firmware offer: version, chunk size, trial_s and the files with size and
    sha256 (64 hex). Errors name the field."""
    errs = []
    if not _ota_name_ok(d.get("version")):
        errs.append("version: %r is not a short name (letters, digits, _-.)" % (d.get("version"),))
    need_int(d, "chunk", 256, OTA_MAX_CHUNK, errs)
    need_int(d, "trial_s", 5, 86400, errs)
    fs = d.get("files")
    if not isinstance(fs, list) or not 0 < len(fs) <= OTA_MAX_FILES:
        errs.append("files: 1..%d entries expected" % OTA_MAX_FILES)
        return errs
    seen = {}
    for i in range(len(fs)):
        f = fs[i]
        pre = "files[%d]." % i
        if not isinstance(f, dict):
            errs.append(pre[:-1] + ": not an object")
            continue
        if not _ota_path_ok(f.get("path")) or f.get("path") in seen:
            errs.append(pre + "path: %r is not a safe relative path (or twice)" % (f.get("path"),))
        else:
            seen[f["path"]] = 1
        need_int(f, "size", 0, OTA_MAX_FILE, errs, pre)
        h = f.get("sha256")
        if not isinstance(h, str) or len(h) != 64 or h.strip("0123456789abcdef"):
            errs.append(pre + "sha256: 64 lowercase hex digits expected")
    return errs


def ota_chunk(version, f, o, data):
    """The chunk message: one header line then the raw bytes (no base64: no 4/3 copy)."""
    return ("%s %d %d\n" % (version, f, o)).encode() + data


def parse_ota_chunk(payload):
    """(version, file index, offset, data memoryview) or ValueError naming the problem."""
    i = payload.find(b"\n")
    if i < 0 or i > 64:
        raise ValueError("chunk: no header line")
    p = bytes(payload[:i]).decode().split(" ")
    if len(p) != 3:
        raise ValueError("chunk: header is not 'VERSION FILE OFFSET'")
    f = int(p[1])
    o = int(p[2])
    n = len(payload) - i - 1
    if n > OTA_MAX_CHUNK:
        raise ValueError("chunk: %d bytes over %d" % (n, OTA_MAX_CHUNK))
    if f < 0 or o < 0:
        raise ValueError("chunk: negative file or offset")
    return p[0], f, o, memoryview(payload)[i + 1:]


CHECKS = {"setpoint": check_setpoint, "schedule": check_schedule, "forecast": check_forecast,
          "config": check_config, "ota": check_ota_offer, "tariff": check_tariff}


# telemetry "g": the hourly green ledger (edgefw/ledger.py): "hour" = a closed UTC hour
# (the last one in every other record, older ones in turn between), "cur" = the current
# one so far, each these Wh fields plus t0 (the hour's start, unix s) and cfe_cpct
# (it_green_wh / it_wh, 0.01 %: the hourly carbon-free share)
LEDGER_FIELDS = ("pv_wh", "pv_load_wh", "pv_bat_wh", "bat_green_wh", "bat_load_wh",
                 "grid_imp_wh", "grid_load_wh", "it_wh", "it_green_wh")


def check_ledger(g, errs):
    for h in ("hour", "cur") if isinstance(g, dict) else ():
        if h in g:
            x = g[h] if isinstance(g[h], dict) else {}
            for k in LEDGER_FIELDS + ("t0", "cfe_cpct"):
                need_int(x, k, 0, 1 << 40, errs, "g.%s." % h)


def check_telemetry(d):
    """For receivers: the fields every telemetry record carries."""
    errs = []
    if not isinstance(d, dict):
        return ["telemetry: must be an object"]
    check_ledger(d.get("g"), errs)
    need_int(d, "seq", 0, 1 << 62, errs)
    need_int(d, "ts", 0, 1 << 40, errs)
    if d.get("state") not in STATES:
        errs.append("state: %r is not one of %s" % (d.get("state"), ", ".join(STATES)))
    for k in d:
        # null: not known now (a point missing, no PV inverter limit)
        if k.endswith("_w") and d[k] is not None and not _int(d[k]):
            errs.append("%s: %r is not an integer W (or null)" % (k, d[k]))
    return errs


# ---- Home Assistant MQTT discovery (docs/mqtt.md; edgefw/hadisc.py) --------------------

HA_PREFIX = "homeassistant"


def ha_node_id(device_id):
    """The device_id as an HA node_id (only [A-Za-z0-9_-]; anything else becomes _)."""
    out = []
    for ch in device_id:
        if ch.isalpha() or ch.isdigit() or ch in "_-":
            out.append(ch if ord(ch) < 128 else "_")
        else:
            out.append("_")
    return "".join(out)


def ha_config_topic(prefix, device_id, object_id, component="sensor"):
    """'<prefix>/sensor/<node_id>/<object_id>/config' (retained)."""
    return "%s/%s/%s/%s/config" % (prefix, component, ha_node_id(device_id), object_id)


def telemetry_fields():
    """The fields of a telemetry record (edgefw/app.py App.telemetry + the link's seq, ts,
    boot, state); "e." = the energy counters (edgefw/energy.py counters()), "g." = the
    hourly green ledger (check_ledger; "g.hour" only in every other record). For
    receivers and the checks of what HA discovery and the dashboard read. Optional ones
    (headroom without params, e and g without energy) may be missing from a record."""
    f = ["seq", "ts", "boot", "state", "sp_w", "curtail_w", "pv_limit_w", "safety",
         "grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w",
         "headroom_w", "headroom_1h_w"]
    for n in ("pv_load", "pv_bat", "pv_grid", "bat_load", "bat_grid", "grid_load",
              "grid_bat", "curtail", "grid_imp", "grid_exp", "it", "aux", "pv", "it_green",
              "bat_green"):
        f.append("e." + n + "_wh")
    f.append("e.co2_kg")
    f.append("e.renewable_cpct")
    for h in ("cur", "hour"):
        for n in ("t0", "cfe_cpct") + LEDGER_FIELDS:
            f.append("g.%s.%s" % (h, n))
    return f
