# Seeded config fuzz (issue 14 item 2): mutants of the shipped templates and the factory
# default (wrong types at every level, nulls, huge numbers, bools for ints, deleted and
# unknown keys, swapped containers) through config.validate and the boot checks
# (app.check_config: maps, dispatch parameters, the link section). Neither may raise, and
# validate always returns a list of "field: problem" text. Runs on every runtime; the
# generator stays in small ints (31-bit on the 32-bit port). A longer CPython run:
# tests/host/test_config_fuzz_soak.py (make soak).
import json
import os

from edgefw import app as appmod
from edgefw import config

N_MUTANTS = 2000
SEED = 20261202
_M30 = (1 << 30) - 1


class Xs30:
    """xorshift on 30 bits, triple (8, 13, 11): full period 2**30 - 1 (checked by the
    order of its GF(2) matrix). Each shift masks first, so no value passes 30 bits."""

    def __init__(self, seed):
        self.s = (seed & _M30) or 1

    def next(self):
        s = self.s
        s ^= (s & (_M30 >> 8)) << 8
        s ^= s >> 13
        s ^= (s & (_M30 >> 11)) << 11
        self.s = s
        return s

    def below(self, n):
        return self.next() % n

    def pick(self, seq):
        return seq[self.next() % len(seq)]


# values a hand edit or a bad tool writes; containers are copied on use
_PALETTE = (None, True, False, 0, 1, -1, 2, 7, 255, 1000, 65535, 2 ** 30 - 1, -2 ** 30,
            2 ** 31, 10 ** 20, -10 ** 20, 1.5, -0.5, 1e300, "", "x", "bus0", "bus1", "uart1",
            "auto", "pcs", "bms", "sdm630", "nope@x", "a" * 300, "\u00e9\u4e2d", "0" * 64,
            [], [None], [1, 2], ["p_w"], {}, {"name": None}, {"a": [None, {}]})
_KEYS = ("name", "bus", "port", "role", "map", "slave", "points", "tls", "insecure", "ca",
         "host", "key", "schedule", "region", "export_allowed", "x", "", "windows", "t0")
# a link and site section with every field set, so their checks are fuzzed too
_FULL = {
    "version": 1, "device_id": "gw-fuzz", "status_s": 10, "wdt_ms": 0, "trial_s": 600,
    "console": True, "note": "fuzz",
    "buses": [{"name": "a", "port": "dev/a", "baud": 9600, "parity": "E", "stop": 1,
               "timeout_ms": 100, "retries": 1, "tx": 1, "rx": 2, "de_pin": 3},
              {"name": "b", "port": 2}],
    "devices": [
        {"name": "pcs", "role": "pcs", "map": "sunspec_pcs", "slave": 1, "bus": "a"},
        {"name": "bms", "role": "bms", "map": "seplos_v3", "slave": 1, "bus": 1,
         "points": ["soc_cpct", "alarm"]},
        {"name": "grid", "role": "grid_meter", "map": "sdm630", "slave": 2, "bus": "a"},
        {"name": "inv", "role": "pv_inverter", "map": "sunspec_pv", "slave": 3, "bus": "b",
         "period_ms": 0}],
    "site": {"battery_wh": 20000, "pcs_w": 5000, "export_allowed": False, "region": "east",
             "sun_rise_s": 20000, "sun_set_s": 70000, "grid_factor_g_kwh": 500,
             "schedule": [{"t0": 0, "t1": 3600, "soc_cpct": 5000, "pmin_w": -1000,
                           "pmax_w": 1000, "aim_w": 10, "exp": 100}]},
    "limits": {"pcs_charge_max_w": 5000, "pcs_discharge_max_w": 5000, "soc_min_cpct": 1000,
               "soc_max_cpct": 9500, "export_max_w": 0, "import_max_w": 8000},
    "safety": {"clean_s": 30, "stale_polls": 3, "trip_on_alarm": True},
    "control": {"period_ms": 1000, "refresh_ms": 10000, "mode": "hold", "hold_w": -100},
    "link": {"host": "127.0.0.1", "port": 8883, "tls": True, "ca": "ca.der",
             "insecure": False, "user": "u", "password": "p", "key": "00" * 32,
             "keepalive_s": 30, "grace_s": 30, "loss_s": 0, "recover_s": 60,
             "ramp_w_s": 1000, "ring_kb": 64, "ring_segs": 8, "telemetry_ms": 10000,
             "backoff_min_ms": 1000, "backoff_max_ms": 60000, "window": 4,
             "sp_max_w": 100000},
    "net": {"ssid": "site", "psk": "secret"},
}


def _copy(x):
    return json.loads(json.dumps(x))


def _templates():
    out = [_copy(_FULL), config.default()]
    d = __file__.rsplit("/", 3)[0] if __file__.count("/") >= 3 else "."
    d += "/host/edgegw/templates"
    try:
        names = sorted(os.listdir(d))
    except OSError:
        names = []
    for n in names:
        if n.endswith(".json"):
            with open(d + "/" + n) as f:
                out.append(json.loads(f.read()))
    return out


def _nodes(x, out, parent, key):
    # every (container, key) pair of the tree, the root as (None, None)
    out.append((parent, key))
    if isinstance(x, dict):
        for k in x:
            _nodes(x[k], out, x, k)
    elif isinstance(x, list):
        for i in range(len(x)):
            _nodes(x[i], out, x, i)


def _value(r, nodes):
    if r.below(4) == 0 and len(nodes) > 1:
        p, k = nodes[1 + r.below(len(nodes) - 1)]
        return _copy(p[k])  # a value from elsewhere in the config: right type, wrong place
    return _copy(r.pick(_PALETTE))


def mutate(cfg, r):
    """One mutation of cfg (in place where it can be); returns the config."""
    nodes = []
    _nodes(cfg, nodes, None, None)
    p, k = nodes[r.below(len(nodes))]
    if p is None:
        return _value(r, nodes) if r.below(8) == 0 else cfg
    op = r.below(6)
    if op <= 1:
        p[k] = _value(r, nodes)
    elif op == 2:
        if isinstance(p, dict):
            del p[k]
        else:
            p.pop(k)
    elif op == 3:
        if isinstance(p, dict):
            p[r.pick(_KEYS)] = _value(r, nodes)
        else:
            p.append(_copy(p[k]))  # a duplicate: the same name, slave, bus twice
    elif op == 4:
        x = p[k]
        if isinstance(x, dict):
            p[k] = [x[j] for j in x]
        elif isinstance(x, list):
            p[k] = {"0": x}
        else:
            p[k] = [x]
    else:
        x = p[k]
        if isinstance(x, bool):
            p[k] = 1 if x else 0  # an int where a bool belongs
        elif isinstance(x, int):
            p[k] = r.pick((x > 0, -x, x * 1000003, x + 2 ** 31, str(x)))
        elif isinstance(x, str):
            p[k] = r.pick((x.upper(), x + x, x[:1], None))
        else:
            p[k] = None
    return cfg


def check_one(cfg):
    """validate and, if it passes, the boot checks: neither raises; errors are text."""
    errs = config.validate(cfg)
    assert isinstance(errs, list), errs
    for e in errs:
        assert isinstance(e, str) and ": " in e, e
        assert not e.startswith(config.UNCHECKABLE), (e, cfg)
    if not errs:
        more = appmod.check_config(cfg)
        assert isinstance(more, list), more
        for e in more:
            assert isinstance(e, str), e
    return errs


def run(n, seed):
    r = Xs30(seed)
    tpl = _templates()
    texts = [json.dumps(t) for t in tpl]
    bad = 0
    for _ in range(n):
        cfg = json.loads(r.pick(texts))
        for _ in range(1 + r.below(4)):
            cfg = mutate(cfg, r)
        try:
            errs = check_one(cfg)
        except Exception as e:
            raise AssertionError("%r on %s" % (e, json.dumps(cfg)))
        if errs:
            bad += 1
    return bad


def test_templates_are_valid():
    for t in _templates():
        assert check_one(t) == [], t


def test_generator_small_ints():
    r = Xs30(SEED)
    seen = {}
    for _ in range(5000):
        x = r.next()
        assert 0 < x <= _M30
        seen[x] = 1
    assert len(seen) == 5000


def test_mutated_configs_never_raise():
    bad = run(N_MUTANTS, SEED)
    assert N_MUTANTS // 4 < bad < N_MUTANTS, bad  # most mutants are refused, not all


def test_null_bus_name_and_unknown_bus_is_an_error_not_a_crash():
    # issue 14 item 2 as reported
    c = config.default()
    c["buses"][0]["name"] = None
    c["devices"][0]["bus"] = "nowhere"
    errs = config.validate(c)
    assert "buses[0].name: missing (text)" in errs, errs
    assert "devices[0].bus: 'nowhere' is not a bus name (bus1)" in errs, errs
    c = config.default()
    for b in c["buses"]:
        b["name"] = None
    errs = config.validate(c)
    assert "devices[0].bus: 'bus0' is not a bus name (no valid bus)" in errs, errs


def test_wrong_types_name_the_field():
    for path, val, want in (
            (("site", "region"), {}, "site.region: {} is not text"),
            (("limits", "soc_max_cpct"), True, "limits.soc_max_cpct: True is not an integer"),
            (("limits", "soc_max_cpct"), 0, "limits.soc_min_cpct: 1000 above soc_max_cpct 0"),
            (("buses",), [None], "buses[0]: must be an object"),
            (("net", "ssid"), 5, "net.ssid: 5 is not text"),
            (("control", "hold_w"), 10 ** 20, "control.hold_w: 100000000000000000000 out of "
             "range -10000000..10000000")):
        c = _copy(_FULL)
        x = c
        for k in path[:-1]:
            x = x[k]
        x[path[-1]] = val
        errs = config.validate(c)
        if not errs:
            errs = appmod.check_config(c)
        assert want in errs, (want, errs)


DIR = "/tmp/edgegw-test-config-fuzz"


def test_bad_config_boots_the_last_good():
    # whatever config.json holds, the boot runs the last good copy and says why
    try:
        os.mkdir(DIR)
    except OSError:
        pass
    old = os.getcwd()
    os.chdir(DIR)
    try:
        for f in (config.PATH, config.LAST_GOOD, config.TRIAL):
            try:
                os.remove(f)
            except OSError:
                pass
        good = config.default()
        good["device_id"] = "gw-good"
        config.write_atomic(config.LAST_GOOD, config.dumps(good))
        bad = config.default()
        bad["buses"][0]["name"] = None
        bad["devices"][0]["bus"] = "nowhere"
        r = Xs30(SEED + 1)
        texts = [config.dumps(bad), "[" * 5000 + "]" * 5000, "\x00\xff{", "null", "1e999",
                 json.dumps({"buses": {"name": None}, "devices": [[None]]})]
        for _ in range(20):
            texts.append(config.dumps(mutate(mutate(_copy(bad), r), r)))
        for t in texts:
            config.write_atomic(config.PATH, t)
            cfg, src, rep = config.boot(appmod.check_config)
            if cfg["device_id"] != "gw-good":
                # a mutant that happens to be valid runs on trial; nothing else may
                assert src == config.PATH and config.on_trial(), (t, src, rep)
                os.remove(config.TRIAL)
                continue
            assert src == config.LAST_GOOD and rep, (t, src, rep)
            assert rep[0].startswith("config.json: "), rep
            assert not [e for e in rep if config.UNCHECKABLE in e], rep
    finally:
        os.chdir(old)
