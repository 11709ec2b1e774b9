# Learnt time-of-day profiles (firmware/edgefw/learnt.py) and the plan using them
# (site.plan_learnt), on every runtime (CPython pytest, MicroPython mpytest, 32-bit node).
import os

from edgefw import dispatch as D
from edgefw.learnt import Learnt, NSLOT
from test_dispatch import mk, _no_alloc
from _helpers import raises
from test_energy import _rm

H = 3600


def _day(lt, it, aux, pv, step=60):
    # one day of measurements at `step` s: it/aux/pv are functions of the slot; the
    # next day's first measurement commits its last slot (or _close)
    for t in range(0, 86400, step):
        s = t // 900
        lt.learn(t, pv(s), it(s), aux(s))


def _close(lt):
    lt.learn(43200, 0, 0, 0)    # time of day went back: the last slot is committed


def _state(it, aux, pv):
    return {"v": 1, "seq": 1, "it": [it(s) for s in range(NSLOT)],
            "aux": [aux(s) for s in range(NSLOT)], "pv": [pv(s) for s in range(NSLOT)],
            "seen": [1] * NSLOT}


def test_slot_arithmetic():
    lt = Learnt()
    assert [lt.slot_of(x) for x in (0, 899, 900, 43200, 86399)] == [0, 0, 1, 48, 95]
    # past midnight (a plan block of tomorrow) folds over
    assert lt.slot_of(86400) == 0 and lt.slot_of(86400 + 1800) == 2
    assert lt.slot_of(2 * 86400 - 1) == 95


def test_learns_slot_means_and_averages_days():
    lt = Learnt()
    assert not any(lt.seen)
    _day(lt, lambda s: 10000 + 100 * s, lambda s: 2000, lambda s: 40000 if 30 <= s < 70 else 0)
    _close(lt)
    assert all(lt.seen)
    assert lt.it[0] == 10000 and lt.it[95] == 10000 + 9500 and lt.aux[50] == 2000
    assert lt.pv[40] == 40000 and lt.pv[10] == 0 and lt.pv_max == 40000
    # a second day: loads move half way (gain 1/2), PV a quarter (gain 1/4)
    _day(lt, lambda s: 20000, lambda s: 4000, lambda s: 0)
    _close(lt)
    assert lt.it[0] == 15000 and lt.aux[50] == 3000 and lt.pv[40] == 30000
    # a slot measured over less than half of it (boot, clock step) is not committed
    lt2 = Learnt()
    for t in range(0, 400, 60):
        lt2.learn(t, 1000, 5000, 100)
    lt2.learn(900, 0, 0, 0)
    assert not lt2.seen[0]
    # no clock: nothing learnt
    lt3 = Learnt()
    lt3.on = False
    _day(lt3, lambda s: 1, lambda s: 1, lambda s: 1)
    assert not any(lt3.seen)


def _path():
    return "/tmp/edgegw_test_learnt_%d" % os.getpid() if hasattr(os, "getpid") else \
        "/tmp/edgegw_test_learnt"


def test_persistence_round_trip_torn_slot_and_bad_state():
    path = _path()
    _rm(path)
    try:
        lt = Learnt()
        assert not lt.load(path)
        _day(lt, lambda s: 10000 + s, lambda s: 3000, lambda s: 500 * s)
        _close(lt)
        lt.save(path)
        first = lt.state()
        _day(lt, lambda s: 30000, lambda s: 1000, lambda s: 0)
        _close(lt)
        lt.save(path)
        f = Learnt()
        assert f.load(path)
        assert list(f.it) == list(lt.it) and list(f.aux) == list(lt.aux)
        assert list(f.pv) == list(lt.pv) and list(f.seen) == [1] * NSLOT
        assert f.pv_max == lt.pv_max and f.seq == lt.seq
        # tear the newest slot: the older one is used
        newest = "%s.%d" % (path, lt.seq & 1)
        with open(newest, "r") as fh:
            text = fh.read()
        with open(newest, "w") as fh:
            fh.write(text[:len(text) // 2])
        g = Learnt()
        assert g.load(path) and list(g.it) == first["it"]
        # a state that does not fit changes nothing
        bad = _state(lambda s: 1, lambda s: 1, lambda s: 1)
        bad["it"][3] = -5
        assert not g.restore(bad) and list(g.it) == first["it"]
        assert not g.restore({"v": 2}) and not g.restore([])
    finally:
        _rm(path)


def test_persist_interval_bounds_writes():
    path = _path() + "_p"
    _rm(path)
    try:
        lt = Learnt(3600)
        n = 0
        for t in range(0, 86400 + 1, 60):
            lt.learn(t % 86400, 1000, 2000, 300)
            if lt.persist(t, path):
                n += 1
        assert n == 24 and lt.writes == 24
    finally:
        _rm(path)


_SITE = dict(reserve_s=0, grid_cap_w=10 ** 7, tz_s=0)


def _pair(st, mode=1, **kw):
    # the same site without and with site.plan_learnt, both with the same learnt profiles
    a = mk(plan_learnt=0, **dict(_SITE, **kw))
    b = mk(plan_learnt=mode, **dict(_SITE, **kw))
    if st is not None:
        assert a.learnt.restore(st) and b.learnt.restore(st)
    return a, b


def test_cold_start_is_the_plan_without_profiles():
    # nothing learnt yet: plan_learnt changes nothing (the first slots are still measuring)
    a, b = _pair(None, pv_peak_w=30000, sun_rise_s=6 * H, sun_set_s=18 * H)
    a.set_forecast(0, 900, [20000] * 24, 86400)
    b.set_forecast(0, 900, [20000] * 24, 86400)
    for t in range(8 * H, 8 * H + 840, 60):
        pv = 15000 + (t // 60) * 10
        sa = a.step(t, pv, 20000, 2000, None, 6000, 10 ** 6, 10 ** 6)
        sb = b.step(t, pv, 20000, 2000, None, 6000, 10 ** 6, 10 ** 6)
        assert (sa, a.level_w, a.reason) == (sb, b.level_w, b.reason)
    assert b.learnt.slot == 32 and not any(b.learnt.seen)


def test_plan_keeps_energy_for_the_learnt_evening_load():
    # midnight, a 6 h forecast of the 20 kW base; every evening (18-22 h) the site ran a
    # 70 kW load (learnt). Without the IT profile (plan_learnt 0 or 1) the plan sees 20 kW
    # all day and shaves now down to ~19 kW; with it (2) the energy is kept for the evening
    # (only the evening above ~53 kW is shaved).
    st = _state(lambda s: 70000 if 72 <= s < 88 else 20000, lambda s: 2000, lambda s: 0)
    a, b = _pair(st, 2)
    for d in (a, b):
        d.set_forecast(0, 900, [20000] * 24, 86400)
        for t in range(0, 600, 60):
            d.step(t, 0, 20000, 2000, None, 9000, 10 ** 6, 10 ** 6)
    assert a.level_w < 25000, a.level_w
    assert b.level_w > a.level_w + 20000, (a.level_w, b.level_w)


def test_plan_takes_the_learnt_aux_not_the_present_one():
    # 20:00, a heat pump's compressor is on (25 kW aux now); the learnt aux of the night is
    # 5 kW. Persisting the present aux plans a 45 kW night (level ~43 kW); the learnt aux
    # a 25 kW one (level ~23 kW).
    st = _state(lambda s: 20000, lambda s: 5000, lambda s: 0)
    a, b = _pair(st)
    for d in (a, b):
        d.set_forecast(20 * H, 900, [20000] * 24, 86400)
        for t in range(20 * H, 20 * H + 600, 60):
            d.step(t, 0, 20000, 25000, None, 6000, 10 ** 6, 10 ** 6)
    assert b.level_w < a.level_w - 15000, (a.level_w, b.level_w)


def test_plan_counts_on_the_learnt_morning_pv():
    # 01:00, battery at 90 %, the site's PV is 80 kW at midday (learnt) while pv_peak_w
    # says 20 kW: the parabola x index sees no surplus tomorrow and holds the night load's
    # energy for the day; the learnt PV refills the battery, so it shaves deeper tonight.
    pv = lambda s: 0 if s < 28 or s >= 68 else 80000 - 1500 * (s - 48 if s > 48 else 48 - s)
    st = _state(lambda s: 30000, lambda s: 2000, pv)
    a, b = _pair(st, pv_peak_w=20000, sun_rise_s=7 * H, sun_set_s=17 * H)
    for d in (a, b):
        d.set_forecast(H, 900, [30000] * 24, 86400)
        for t in range(H, H + 600, 60):
            d.step(t, 0, 30000, 2000, None, 9000, 10 ** 6, 10 ** 6)
    assert b.level_w < a.level_w - 3000, (a.level_w, b.level_w)


def test_step_with_profiles_does_not_allocate():
    # learning across slot boundaries (commits) and a plan on the learnt profiles
    st = _state(lambda s: 25000 + 200 * s, lambda s: 3000, lambda s: 40000 if 28 <= s < 68 else 0)
    d = mk(plan_learnt=1, pv_peak_w=60000, sun_rise_s=21600, sun_set_s=64800, tz_s=0,
           reserve_s=0)
    assert d.learnt.restore(st)
    _no_alloc(d, 19800)
    assert d.learnt.slot > 22 and d.plan.profile.rel_plans == D.KCI_FAST


def test_cloud_aux_and_pv_forecasts_over_the_learnt_until_they_expire():
    # 20:00, learnt night aux 5 kW; the cloud says 25 kW of aux for the next 6 h (a cold
    # night): the plan keeps energy for it (a higher level) until the forecast expires,
    # then plans on the learnt aux again (the same level as without the cloud's aux)
    st = _state(lambda s: 20000, lambda s: 5000, lambda s: 0)
    a, b = _pair(st)
    a, b = b, mk(plan_learnt=1, **_SITE)     # both on the learnt profiles
    assert b.learnt.restore(st)
    t0 = 20 * H
    a.set_forecast(t0, 900, [20000] * 24, t0 + H)
    b.set_forecast(t0, 900, [20000] * 24, t0 + H, None, [25000] * 24)
    for t in range(t0, t0 + 600, 60):
        for d in (a, b):
            d.step(t, 0, 20000, 5000, None, 6000, 10 ** 6, 10 ** 6)
    assert b.level_w > a.level_w + 3000, (a.level_w, b.level_w)
    for t in range(t0 + H, t0 + H + 600, 60):
        for d in (a, b):
            d.step(t, 0, 20000, 5000, None, 6000, 10 ** 6, 10 ** 6)
    assert b.level_w == a.level_w, (a.level_w, b.level_w)
    # the cloud's PV forecast (hourly steps, 24 h) shows a sunny day the parabola does
    # not (pv_peak_w 20 kW): at 01:00 the plan shaves deeper, the day will refill it
    a, b = _pair(None, pv_peak_w=20000, sun_rise_s=7 * H, sun_set_s=17 * H)
    pvf = [0] * 6 + [20000, 50000, 70000, 80000, 80000, 70000, 50000, 20000] + [0] * 10
    a.set_forecast(H, 3600, [30000] * 24, 2 * H)
    b.set_forecast(H, 3600, [30000] * 24, 2 * H, pvf)
    for t in range(H, H + 600, 60):
        for d in (a, b):
            d.step(t, 0, 30000, 2000, None, 9000, 10 ** 6, 10 ** 6)
    assert b.level_w < a.level_w - 3000, (a.level_w, b.level_w)
    # bad lists: a clear error, the old forecast kept
    n = b.forecast.n_pv
    e = raises(ValueError, b.set_forecast, H, 3600, [1], 2 * H, [1, "2"])
    assert "pv_w[1]" in str(e) and b.forecast.n_pv == n
    e = raises(ValueError, b.set_forecast, H, 3600, [1], 2 * H, None, 5)
    assert "aux_w" in str(e)


def test_step_with_cloud_pv_and_aux_forecasts_does_not_allocate():
    d = mk(plan_learnt=1, pv_peak_w=60000, sun_rise_s=21600, sun_set_s=64800, tz_s=0,
           reserve_s=0)
    assert d.learnt.restore(_state(lambda s: 25000, lambda s: 3000, lambda s: 30000))
    _no_alloc(d, 19800, [200 * i for i in range(150)], [3000] * 100)
    assert d.forecast.n_pv == 150 and d.forecast.n_aux == 100
