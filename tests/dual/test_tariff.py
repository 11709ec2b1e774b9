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
