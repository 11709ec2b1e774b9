# Site model: derived powers, balance fill-in, quality and BMS limits in W.
from edgefw import clock
from edgefw.site import Site, Q_OK, Q_DERIVED, Q_STALE, Q_NONE


class FakeDev:
    """What Site reads from a devices.Device: role, values, read times, stale()."""

    def __init__(self, name, role, values, period_ms=1000):
        self.name = name
        self.role = role
        self.period_ms = period_ms
        self.values = {}
        self.t = {}
        self.is_stale = False
        self.set(values)

    def set(self, values, now=None):
        if now is None:
            now = clock.site_ms()
        for k in values:
            self.values[k] = values[k]
            self.t[k] = now

    def stale(self):
        return self.is_stale


def _site():
    devs = [FakeDev("grid", "grid_meter", {"p_w": 1200}),
            FakeDev("pv", "pv_meter", {"p_w": 3000}),
            FakeDev("it1", "load_meter", {"p_w": 2500}),
            FakeDev("it2", "load_meter", {"p_w": 700}),
            FakeDev("pcs", "pcs", {"p_w": -1000, "fault": 0}),
            FakeDev("bms", "bms", {"soc_cpct": 8320, "v_cv": 5325, "i_ca": -137,
                                   "ccl_ca": 18000, "dcl_ca": 18000, "alarm": 0, "protect": 0})]
    return devs, Site(devs, stale_polls=3)


def test_derived_values():
    devs, s = _site()
    v = s.update()
    assert v["pv_w"] == 3000 and v["it_w"] == 3200 and v["grid_w"] == 1200
    # no aux meter: the load the meters do not explain (here none)
    assert v["aux_w"] == 0 and s.q["aux_w"] == Q_DERIVED
    assert v["bat_w"] == -1000 and v["soc_cpct"] == 8320
    assert v["ccl_w"] == 9585 and v["dcl_w"] == 9585  # 180 A x 53.25 V
    assert s.ok("grid_w", "pv_w", "it_w", "bat_w", "soc_cpct")


def test_missing_meter_derived_from_balance():
    devs, s = _site()
    devs[0].is_stale = True
    v = s.update()
    # grid = it + aux - pv - bat = 3200 + 0 - 3000 + 1000
    assert v["grid_w"] == 1200 and s.q["grid_w"] == Q_DERIVED
    devs[1].is_stale = True  # two unknown: nothing derived
    s.update()
    assert s.q["grid_w"] == Q_STALE and not s.ok("grid_w")


def test_unmetered_aux_derived():
    devs, s = _site()
    devs[0].set({"p_w": 1500})
    v = s.update()
    assert v["aux_w"] == 300 and s.q["aux_w"] == Q_DERIVED


def test_silent_pv_meter_derived_with_the_last_aux_estimate():
    # aux is unmetered (400 W the meters do not explain); then the PV meter goes silent:
    # PV from the balance must still count the aux load, not assume it is 0
    devs, s = _site()
    devs[0].set({"p_w": 1600})
    v = s.update()
    assert v["aux_w"] == 400
    devs[1].is_stale = True
    v = s.update()
    assert s.q["pv_w"] == Q_DERIVED
    assert v["pv_w"] == 3000, v["pv_w"]  # 3200 + 400 - 1600 + (-1000)... = 3000
    assert v["aux_w"] == 400


def test_one_skewed_balance_does_not_become_the_aux_estimate():
    # meters read either side of a setpoint step (grid after it, the PCS readback
    # before): that one balance is 200 W off; when the grid meter then goes silent, the
    # grid derived from the balance must use the aux load of the steady polls
    devs, s = _site()
    devs[0].set({"p_w": 1600})
    for _ in range(3):
        assert s.update()["aux_w"] == 400
    devs[0].set({"p_w": 1400})  # the PCS discharges 200 W more; its readback lags
    assert s.update()["aux_w"] == 200
    assert s.aux_est == 400
    devs[4].set({"p_w": -800})  # the readback catches up; now the grid meter is silent
    devs[0].is_stale = True
    v = s.update()
    assert s.q["grid_w"] == Q_DERIVED
    assert v["grid_w"] == 1400, v["grid_w"]  # 3200 + 400 - 3000 - (-800)
    # a real change of the aux load is taken, one poll late
    devs[0].is_stale = False
    devs[0].set({"p_w": 1900})
    s.update()
    assert s.aux_est == 400
    s.update()
    assert s.aux_est == 900


def test_battery_from_bms_without_pcs():
    devs = [FakeDev("bms", "bms", {"v_cv": 5000, "i_ca": -2000})]
    s = Site(devs)
    v = s.update()
    assert v["bat_w"] == 1000  # 20 A out of a 50 V pack = discharging


def test_old_value_is_stale():
    devs, s = _site()
    now = clock.ticks_add(clock.site_ms(), 4001)
    v, age, q = s.point(devs[5], "soc_cpct", now)
    assert v == 8320 and age >= 4001 and q == Q_STALE
    v, age, q = s.point(devs[5], "nothing", now)
    assert v is None and q == Q_NONE
    snap = s.snapshot()
    assert snap["points"]["bms"]["soc_cpct"][0] == 8320 and snap["q"]["grid_w"] in ("ok", "none")


def test_old_value_stays_stale_past_tick_wrap():
    # CPython's clock emulates 32-bit ports (ticks period 2**30 ms): an age past 2**29 ms
    # (6.2 days) must not wrap back to "fresh". The control loop updates the site at
    # least every minute; here every hour of site time for 7 days.
    devs, s = _site()
    bms = devs[5]
    t0 = clock.site_ms()
    for k in bms.t:
        bms.t[k] = t0
    now = t0
    for h in range(7 * 24 + 1):
        now = clock.ticks_add(t0, 0)
        for i in range(h):
            now = clock.ticks_add(now, 3600000)
        s.update(now)
        v, age, q = s.point(bms, "soc_cpct", now)
        if h >= 1:
            assert q == Q_STALE and age >= 3600000, (h, age, q)
            assert s.q["soc_cpct"] == Q_STALE
    # a new reading is fresh again
    bms.set({"soc_cpct": 5000}, now)
    assert s.point(bms, "soc_cpct", now)[2] == Q_OK
