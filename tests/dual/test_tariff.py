# The site tariff (firmware/edgefw/tariff.py): validation that names the field and never
# raises, the calendar month from the site clock, the period and price of an hour, the
# 24 h price look-ahead without allocation. Runs on CPython and both MicroPythons.
from _helpers import MICROPYTHON, Rand
from edgefw import tariff, dispatch, config

# Guangdong 1-10 kV shape (docs/config.md): valley, flat, peak, sharp
SUMMER = [0] * 8 + [1, 1, 2, 3, 1, 1, 2, 3, 3, 2, 2] + [1] * 5
REST = [0] * 8 + [1, 1, 2, 2, 1, 1, 2, 2, 2, 2, 2] + [1] * 5


def gd():
    return {"periods": [{"name": "valley", "price_cfen": 2470},
                        {"name": "flat", "price_cfen": 6500},
                        {"name": "peak", "price_cfen": 11050},
                        {"name": "sharp", "price_cfen": 13813}],
            "seasons": [{"name": "summer", "months": [7, 8, 9], "hours": list(SUMMER)},
                        {"name": "rest", "months": [1, 2, 3, 4, 5, 6, 10, 11, 12],
                         "hours": list(REST)}],
            "demand_cfen_kw": 320000, "cycle_cost_cfen": 500}


def _lock(on):
    if MICROPYTHON:
        import micropython
        if on:
            micropython.heap_lock()
        else:
            micropython.heap_unlock()


def errs(t, ea=False):
    return tariff.validate(t, "site.tariff", ea)[1]


def test_valid_tariff_normalised():
    t, e = tariff.validate(gd())
    assert e == []
    assert t["export_cfen"] is None and t["demand_cfen_kw"] == 320000
    assert [q["price_cfen"] for q in t["periods"]] == [2470, 6500, 11050, 13813]


def test_errors_name_the_field():
    t = gd()
    t["periods"][3]["price_cfen"] = -5
    assert errs(t) == ["site.tariff.periods[3].price_cfen: -5 out of range 0..1000000"]
    t = gd()
    t["seasons"][1]["hours"][5] = 4
    assert errs(t) == ["site.tariff.seasons[1].hours[5]: 4 is not a period index 0..3"]
    t = gd()
    t["seasons"][1]["months"] = [1, 2, 3, 4, 5, 6, 10, 11, 7]
    e = errs(t)
    assert "site.tariff.seasons[1].months[8]: month 7 is also in seasons[0]" in e
    assert "site.tariff.seasons: months 12 are in no season" in e
    t = gd()
    t["export_cfen"] = 3000
    assert errs(t) == ["site.tariff.export_cfen: an export price needs site.export_allowed "
                       "true"]
    assert errs(t, True) == []
    t = gd()
    t["demand_cfen"] = 1
    assert errs(t) == ["site.tariff.demand_cfen: unknown field (typo?)"]
    t = gd()
    del t["periods"][0]["price_cfen"]
    assert errs(t)[0].startswith("site.tariff.periods[0].price_cfen: missing")
    assert errs([1]) == ["site.tariff: must be an object"]
    assert errs({"periods": True, "seasons": None})[0].startswith("site.tariff.periods:")


def test_validation_never_raises_on_junk():
    r = Rand(17)
    junk = (None, True, 1, -1, 1.5, "x", [], {}, [None], {"a": 1}, 10 ** 40)
    for _ in range(300):
        t = gd()
        k = r.below(6)
        x = junk[r.below(len(junk))]
        if k == 0:
            t["periods"][r.below(4)]["price_cfen"] = x
        elif k == 1:
            t["seasons"][r.below(2)]["hours"][r.below(24)] = x
        elif k == 2:
            t["seasons"][r.below(2)]["months"] = x
        elif k == 3:
            t["periods"][r.below(4)] = x
        elif k == 4:
            t["seasons"] = x
        else:
            t["demand_cfen_kw"] = x
        v, e = tariff.validate(t)
        assert (v is None) == (len(e) > 0)
        for s in e:
            assert s.startswith("site.tariff")


def test_config_and_dispatch_report_tariff_errors():
    cfg = config.default()
    t = gd()
    t["periods"][3]["price_cfen"] = "high"
    cfg["site"] = {"tariff": t}
    e = config.validate(cfg)
    assert "site.tariff.periods[3].price_cfen: 'high' is not an integer" in e
    try:
        dispatch.validate_params({"tariff": t})
        assert False, "no error"
    except ValueError as x:
        assert str(x).startswith("site.tariff.periods[3].price_cfen")
    cfg["site"] = {"tariff": gd()}
    assert config.validate(cfg) == []
    p = dispatch.validate_params({"tariff": gd()})
    assert p["tariff"]["seasons"][0]["months"] == [7, 8, 9]


def test_month_of_day_calendar():
    # days after 2025-01-01: month starts of 2025, leap 2024 and 2028 around February
    starts = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
    for m in range(12):
        assert tariff.month_of_day(starts[m]) == m + 1
        assert tariff.month_of_day(starts[m] - 1) == (m if m else 12)
    assert tariff.month_of_day(-307) == 2 and tariff.month_of_day(-308) == 2   # 2024-02-29
    assert tariff.month_of_day(-306) == 3                                       # 2024-03-01
    d2028 = 365 * 3 + 366      # 2029-01-01
    assert tariff.month_of_day(d2028 - 307) == 2 and tariff.month_of_day(d2028 - 306) == 3
    assert tariff.month_of_day(100000) in range(1, 13)


def test_period_and_price_follow_local_time_and_month():
    T = tariff.Tariff(tariff.validate(gd())[0], 28800)
    # 2025-07-01 03:00 UTC = 11:00 China: summer sharp
    jul = 181 * 86400
    assert T.month(jul + 3 * 3600) == 7 and T.hour(jul + 3 * 3600) == 11
    assert T.period(jul + 3 * 3600) == 3 and T.price_cfen(jul + 3 * 3600) == 13813
    # the same hour in June: peak; 2025-06-30 16:00 UTC is already July 1 00:00 local
    assert T.price_cfen(jul - 86400 + 3 * 3600) == 11050
    assert T.month(jul - 8 * 3600) == 7 and T.hour(jul - 8 * 3600) == 0
    assert T.month(jul - 8 * 3600 - 1) == 6 and T.hour(jul - 8 * 3600 - 1) == 23
    # before the epoch (negative site time): 2024-12-31 23:00 local
    assert T.month(-9 * 3600) == 12 and T.hour(-9 * 3600) == 23
    # a scenario's clock: t_s from its own local midnight, day0 = its date
    S = tariff.Tariff(tariff.validate(gd())[0], 0, -240)     # 2024-05-06
    assert S.month(0) == 5 and S.hour(0) == 0 and S.price_cfen(10 * 3600) == 11050
    assert S.min_cfen == 2470 and S.max_cfen == 13813


def test_prices_ahead_crosses_midnight_and_month_without_allocation():
    T = tariff.Tariff(tariff.validate(gd())[0], 0)
    out = [0] * 24
    t = 180 * 86400 + 20 * 3600          # 2025-06-30 20:00 (tz 0): into July at midnight
    T.prices_ahead(t, out)
    pr = (2470, 6500, 11050, 13813)
    assert out[:4] == [6500] * 4 and out[4:12] == [2470] * 8
    assert out[12:24] == [pr[x] for x in SUMMER[8:20]]
    _lock(True)
    try:
        for k in range(50):
            T.prices_ahead(t + k * 3600, out)
            T.price_cfen(t + k * 977)
    finally:
        _lock(False)
    for k in range(24):
        assert out[k] == T.price_cfen(t + 49 * 3600 + k * 3600)


# ---- rule 5b: the TOU arbitrage hook in the dispatcher ---------------------------------

SITE = {"battery_wh": 100000, "pcs_w": 50000, "soc_min_cpct": 1000, "soc_max_cpct": 9500,
        "reserve_s": 0, "export_margin_w": 200, "ramp_w_s": 5000, "tz_s": 0}


def two_price(valley, peak, cycle=0):
    return {"periods": [{"name": "valley", "price_cfen": valley},
                        {"name": "peak", "price_cfen": peak}],
            "seasons": [{"months": list(range(1, 13)), "hours": [0] * 8 + [1] * 16}],
            "cycle_cost_cfen": cycle}


def _day(d, soc, load=20000, t0=0, n=1440):
    # closed loop, a minute a step, constant load, no PV: [(t, sp, reason)], soc at the end
    out = []
    g = load
    for i in range(n):
        t = t0 + i * 60
        sp = d.step(t, 0, load, 0, g, soc, 10 ** 6, 10 ** 6)
        g = load - sp
        soc = max(0, min(10000, soc - sp * 60 * 10000 // (3600 * 100000)))
        out.append((t, sp, d.reason))
    return out, soc


def test_tou_charges_in_the_valley_and_discharges_in_the_peak():
    d = dispatch.Dispatcher(dispatch.validate_params(dict(SITE, tariff=two_price(2000, 10000))))
    run, soc = _day(d, 3000)
    night = [sp for t, sp, r in run if t < 8 * 3600]
    day = [sp for t, sp, r in run if t >= 8 * 3600]
    assert sum(1 for t, sp, r in run if r == tariff.R_TOU and t < 8 * 3600) > 100
    assert sum(night) < -7000 * 400             # grid charging in the valley (> 45 kWh)
    assert sum(day) > 3000 * 960                # given back in the peak (> 45 kWh)
    assert sum(1 for t, sp, r in run if r == tariff.R_TOU and t >= 8 * 3600) > 100
    assert min(g for g in [20000 - sp for t, sp, r in run]) >= 0     # never export
    # the SOC window holds (soc_min 10 %)
    assert soc >= 900


def test_tou_does_not_cycle_for_a_spread_below_losses_and_wear():
    plain = dispatch.Dispatcher(dispatch.validate_params(SITE))
    ref, _ = _day(plain, 3000)
    for t in (two_price(6000, 6500), two_price(6000, 6300, cycle=200)):
        d = dispatch.Dispatcher(dispatch.validate_params(dict(SITE, tariff=t)))
        run, _ = _day(d, 3000)
        assert [x[1] for x in run] == [x[1] for x in ref]      # today's behaviour exactly
        assert not [1 for x in run if x[2] == tariff.R_TOU]
    # lossless, spread 0.05 CNY/kWh against 0.02 x 2 of wear: it pays
    d = dispatch.Dispatcher(dispatch.validate_params(dict(
        SITE, eta_c_milli=1000, eta_d_milli=1000, tariff=two_price(6000, 6500, cycle=200))))
    run, _ = _day(d, 3000)
    assert sum(sp for t, sp, r in run if t < 8 * 3600 and r == tariff.R_TOU) < 0


def test_tou_step_does_not_allocate():
    d = dispatch.Dispatcher(dispatch.validate_params(dict(SITE, tariff=gd(), tz_s=28800)))
    d.set_forecast(0, 300, [20000 + 100 * i for i in range(200)], 10 ** 9)
    t0 = 181 * 86400 - 10 * 3600        # 2025-06-30 22:00 local: month change, valley
    _day(d, 3000, t0=t0, n=5)
    _lock(True)
    try:
        soc = _steady(d, 3000, t0 + 300, 600)
    finally:
        _lock(False)
    assert d.tou.seen == d.t_plan and 0 <= soc <= 10000


def _steady(d, soc, t, n, load=20000):
    # _day without the record (nothing allocated by the test itself)
    g = load
    for i in range(n):
        sp = d.step(t, 0, load, 0, g, soc, 1000000, 1000000)
        g = load - sp
        soc = soc - sp // 600          # 60 s of sp W on 100 kWh, in 0.01 % (small ints)
        soc = 0 if soc < 0 else (10000 if soc > 10000 else soc)
        t += 60
    return soc


def test_cloud_tariff_in_force_until_it_expires_then_the_configured_one():
    # the gateway's site has no tariff; the cloud sends one for 12 h (cmd/tariff): the
    # valley charge follows it, and after its expiry the site's own rules again
    d = dispatch.Dispatcher(dispatch.validate_params(SITE))
    t, e = tariff.validate(two_price(2000, 10000), "tariff", False)
    assert e == []
    d.set_tariff(t, 12 * 3600)
    run, soc = _day(d, 3000)
    tou = [tt for tt, sp, r in run if r == tariff.R_TOU]
    assert len(tou) > 100 and max(tou) < 12 * 3600, (len(tou), max(tou))
    assert d.tou is None and d.tou_until is None
    # a configured tariff comes back after a cloud one; None now = the configured one now
    d = dispatch.Dispatcher(dispatch.validate_params(dict(SITE, tariff=two_price(2000, 10000))))
    cfg = d.tou
    t2, _ = tariff.validate(two_price(2000, 2100), "tariff", False)
    d.set_tariff(t2, 3600)
    assert d.tou is not cfg and d.tou_until == 3600
    _day(d, 3000, n=61)
    assert d.tou is cfg
    d.set_tariff(t2, 7200)
    d.set_tariff(None, 7200)
    assert d.tou is cfg and d.tou_until is None
    # one already expired is not taken
    d.set_tariff(t2, d.t)
    assert d.tou is cfg


def flat_demand():
    # one price all day and a demand charge: all a battery earns is the billed demand
    return {"periods": [{"name": "flat", "price_cfen": 6000}],
            "seasons": [{"months": list(range(1, 13)), "hours": [0] * 24}],
            "demand_cfen_kw": 400000, "cycle_cost_cfen": 300}


def _billed_run(d):
    # an hour at 40 kW with an empty battery bills 40 kW; then 30 kW with the battery at
    # 80 % for 9 h, then 50 kW for 2 h: [(t, sp, grid)], soc at the end
    soc = 1000
    g = 40000
    out = []
    for i in range(720):
        load = 40000 if i < 60 else (30000 if i < 600 else 50000)
        sp = d.step(i * 60, 0, load, 0, g, soc, 10 ** 6, 10 ** 6)
        g = load - sp
        if i >= 60:
            soc = 8000 if i == 60 else soc
            soc = max(0, min(10000, soc - sp * 60 * 10000 // (3600 * 100000)))
        out.append((i * 60, sp, g))
    return out, soc


def test_demand_charge_does_not_shave_below_the_billed_peak():
    # without a tariff the plan shaves the 30 kW (its level is below); with a demand charge
    # that energy buys nothing (40 kW is billed already) and is kept for the 50 kW later
    plain, _ = _billed_run(dispatch.Dispatcher(dispatch.validate_params(SITE)))
    assert sum(sp for t, sp, g in plain[61:600] if sp > 0) > 1000 * 500
    d = dispatch.Dispatcher(dispatch.validate_params(dict(SITE, tariff=flat_demand())))
    run, soc = _billed_run(d)
    assert sum(sp for t, sp, g in run[61:600] if sp > 0) == 0
    # above the billed peak it still shaves (here the plan's level for 50 kW all day)
    assert min(sp for t, sp, g in run[601:]) > 1000
    assert d.peak.peak_w > 40000 and soc < 8000
