# The hourly green ledger (edgefw/ledger.py over edgefw/energy.py) on all three runtimes:
# a simulated day reconciles with the daily counters, hourly CFE is hourly matching (not
# netting), the per-step update allocates nothing, persistence and its write count.
import os

from edgefw import energy as E
from edgefw import ledger as L
from edgefw import dispatch as D
from _helpers import MICROPYTHON, Rand
from protocols import topics as T

P = D.validate_params({"battery_wh": 100000, "pcs_w": 50000})
DAY0 = 700 * 86400        # 2026-12-01 00:00 UTC in rel() seconds (a small int)
DT_S = 10


def _powers(t, r, soc):
    # (pva, pv, it, aux, bat, grid) at second-of-day t: PV bell 06-18 h (40 kW peak),
    # IT 18-26 kW, the battery takes PV surplus by day and runs the load in the evening
    s = t - 21600
    pv = 0
    if 0 < s < 43200:
        x = s if s < 21600 else 43200 - s
        pv = 40000 * x // 21600 * x // 21600 + r.below(500)
    it = 18000 + r.below(8000)
    aux = 1500 + r.below(500)
    sur = pv - it - aux
    if sur > 0:
        bat = -(sur if sur < 15000 else 15000) if soc < 95000 else 0
    elif t >= 64800 and soc > 10000:
        bat = 12000
    else:
        bat = 0
    if t < 7200 and soc < 60000:
        bat = -10000          # a grid charge at night: grey content, not green
    grid = it + aux - pv - bat
    if grid < 0:              # zero export: the surplus is curtailed
        return pv - grid, pv + grid, it, aux, bat, 0
    return pv, pv, it, aux, bat, grid


def _day(e, path=None, t0=DAY0, lock_from=None):
    r = Rand(17)
    soc = 30000               # Wh in the battery (the simulator's, not the ledger's)
    e.persist(t0, path) if path else e.ledger.roll(t0, e)
    t = 0
    while t < 86400:
        pva, pv, it, aux, bat, grid = _powers(t, r, soc)
        soc -= bat * DT_S // 3600
        t += DT_S
        if lock_from is not None and lock_from <= t < lock_from + 600:
            _locked(e, pva, pv, it, aux, bat, grid, t0 + t)
        else:
            e.step(DT_S * 1000, pva, pv, it, aux, bat, grid)
            if path:
                e.persist(t0 + t, path)
            else:
                e.ledger.roll(t0 + t, e)
    return t0 + t


def _locked(e, pva, pv, it, aux, bat, grid, now):
    if MICROPYTHON:
        import micropython
        micropython.heap_lock()
        try:
            e.step(DT_S * 1000, pva, pv, it, aux, bat, grid)
            e.ledger.roll(now, e)
        finally:
            micropython.heap_unlock()
    else:
        e.step(DT_S * 1000, pva, pv, it, aux, bat, grid)
        e.ledger.roll(now, e)


def _sums(lg):
    tot = [0] * lg.k
    hours = []
    for b in range(24):
        h, v = lg.hour(b)
        hours.append(h)
        for j in range(lg.k):
            tot[j] += v[j]
    return tot, hours


def test_simulated_day_reconciles_with_daily_counters():
    e = E.Energy(P)
    # the per-step update runs heap-locked across the 07:00 hour boundary (07:55-08:05)
    _day(e, lock_from=7 * 3600 - 300)
    lg = e.ledger
    assert lg.n == 24
    tot, hours = _sums(lg)
    assert sorted(hours) == [DAY0 // 3600 + i for i in range(24)]
    worst = 0
    for j in range(lg.k):
        err = tot[j] - e.get(e.ledger.cols[j])
        worst = err if err > worst else (-err if -err > worst else worst)
    assert worst <= 1, worst          # exact by construction: 0
    c = e.counters()
    assert c["bat_green_wh"] > 0 and c["bat_green_wh"] < c["bat_load_wh"]
    # PV used on site + PV stored: every hour's Wh add up to the hour's production
    for b in range(24):
        h, v = lg.hour(b)
        pv, pv_load, pv_bat = v[0], v[1], v[2]
        assert pv_load + pv_bat <= pv + 1 and pv >= 0


def test_hourly_cfe_is_hourly_matching_not_netting():
    e = E.Energy(P)
    _day(e)
    lg = e.ledger
    green = it = 0
    night = evening = None
    for b in range(24):
        h, v = lg.hour(b)
        d = dict(zip(L.NAMES, v))
        hod = h - DAY0 // 3600
        cfe = E._share(d["it_green_wh"], d["it_wh"])
        assert 0 <= cfe <= 10000 and d["it_green_wh"] <= d["it_wh"]
        if hod == 1:
            night = cfe           # grid-charged battery, no PV: nothing carbon-free
        if hod == 19:
            evening = cfe         # the battery's PV content runs the load
        green += d["it_green_wh"]
        it += d["it_wh"]
    assert night == 0 and evening > 2000
    hourly = E._share(green, it)
    # annual-style netting: all the day's PV against all the day's load
    c = e.counters()
    pv, load = c["pv_wh"], c["it_wh"] + c["aux_wh"]
    netted = E._share(pv if pv < load else load, load)
    assert hourly < netted, (hourly, netted)
    # the day's share from the daily counters is the same figure (to rounding)
    assert abs(hourly - e.renewable_cpct()) <= 1


def test_telemetry_record():
    e = E.Energy(P)
    assert e.hourly() == {}
    e.ledger.roll(DAY0 + 36000, e)
    for i in range(360):
        e.step(10000, 20000, 20000, 10000, 0, -10000, 0)
    e.ledger.roll(DAY0 + 36000 + 3600, e)
    e.step(10000, 0, 0, 10000, 0, 10000, 0)
    g = e.hourly()
    last, cur = g["hour"], g["cur"]
    assert last["pv_wh"] == 20000 and last["pv_load_wh"] == 10000
    assert last["pv_bat_wh"] == 10000 and last["grid_imp_wh"] == 0
    assert last["it_wh"] == 10000 and last["cfe_cpct"] == 10000
    assert last["t0"] - cur["t0"] == -3600
    assert last["t0"] == 1735689600 + DAY0 + 36000     # unix s of the hour's start
    assert cur["bat_load_wh"] == 27 and cur["bat_green_wh"] == 27   # 10 kW x 10 s
    for k in cur:
        assert isinstance(cur[k], int), k
    # the shared telemetry check (protocols/topics.py) knows the ledger's fields
    assert L.NAMES == T.LEDGER_FIELDS
    rec = {"seq": 1, "ts": 1800000000, "state": "ONLINE", "g": g}
    assert T.check_telemetry(rec) == []
    g["hour"]["it_wh"] = -1
    del g["cur"]["cfe_cpct"]
    errs = T.check_telemetry(rec)
    assert len(errs) == 2 and "g.hour.it_wh" in errs[0] and "g.cur.cfe_cpct" in errs[1]


def test_telemetry_rotates_through_the_ring():
    # every other record: the last closed hour; between them the older hours in turn, so
    # a collector that missed hours during an outage gets all 48 back from telemetry
    e = E.Energy(P)
    t = DAY0
    e.ledger.roll(t, e)
    for h in range(50):
        e.step(3600000, 0, 0, 1000 + h, 0, 0, 1000 + h)
        t += 3600
        e.ledger.roll(t, e)
    assert e.ledger.n == L.HOURS
    seen = {}
    for k in range(2 * L.HOURS):
        g = e.hourly(k)["hour"]
        if k % 2 == 0:
            assert g["t0"] == 1735689600 + t - 3600 and g["it_wh"] == 1049
        seen[g["t0"]] = g["it_wh"]
    assert len(seen) == L.HOURS
    for t0 in seen:                 # each hour's own figure (it_w rose 1 W an hour)
        assert seen[t0] == 1000 + (t0 - 1735689600 - DAY0) // 3600
    assert e.hourly(1 << 40)["hour"]["t0"] == 1735689600 + t - 3600   # a big seq is fine


def test_unset_clock_and_negative_times():
    e = E.Energy(P)
    e.ledger.roll(-789004800, e)        # an ESP32 RTC at 2000-01-01: not an hour
    assert e.ledger.cur_h is None
    e.ledger.roll(-1800, e)             # 2024-12-31 23:30: hour -1 (floor, not trunc)
    assert e.ledger.cur_h == -1
    e.step(60000, 0, 0, 3600, 0, 0, 3600)
    e.ledger.roll(0, e)
    h, v = e.ledger.hour(0)
    assert h == -1 and v[L.NAMES.index("it_wh")] == 60
    assert e.ledger.hour(1) is None


def _rm(path):
    for s in (".0", ".1", ".0.tmp", ".1.tmp"):
        try:
            os.remove(path + s)
        except OSError:
            pass


def test_persisted_with_the_counters_bounded_writes():
    path = "/tmp/edgegw_test_ledger_%d" % os.getpid() if hasattr(os, "getpid") else \
        "/tmp/edgegw_test_ledger"
    _rm(path)
    try:
        p = dict(P)
        p["energy_persist_s"] = 900
        e = E.Energy(p)
        end = _day(e, path)
        assert e.writes == 96          # 86400 / 900: the ledger adds no write of its own
        f = E.Energy(p)
        assert f.load(path)
        # the last save was at 24:00 (96 x 900 s), after the hour closed: all 24 hours
        assert f.ledger.n == 24 and f.ledger.hour(0) == e.ledger.hour(0)
        assert f.ledger.current(f) == e.ledger.current(e)
        # a reload that continues keeps reconciling: one more hour on both
        for x in (e, f):
            x.step(3600000, 0, 0, 1000, 0, 0, 1000)
            x.ledger.roll(end + 3600, x)
        assert f.ledger.hour(0) == e.ledger.hour(0)
        # a slot from before the ledger (v1 without bat_green, no "l"): counters kept,
        # the ledger starts afresh
        import json
        from binascii import crc32
        st = e.state()
        for k in ("wh", "mwh", "rs", "rms"):
            st[k] = st[k][:E.N_V1]
        del st["l"]
        st["seq"] = 1000
        body = json.dumps(st)
        with open(path + ".0", "w") as fh:
            fh.write("%s\n#crc32 %08x\n" % (body, crc32(body.encode())))
        g = E.Energy(p)
        assert g.load(path) and g.ledger.n == 0 and g.get(E.BAT_GREEN) == 0
        assert g.get(E.IT) == e.get(E.IT)
        # a malformed ledger state: fresh ledger, nothing half-restored
        lg = L.for_energy()
        bad = e.ledger.state()
        bad["rv"][5] = "x"
        assert not lg.restore(bad) and lg.n == 0 and lg.rv[0] == 0
        assert not lg.restore({"h": 3})
    finally:
        _rm(path)
