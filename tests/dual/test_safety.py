# Safety interlock: trips on BMS alarm/protect/stale and PCS fault; releases after clean_s.
from edgefw import clock
from edgefw.safety import Safety
from edgefw.site import Site
from test_site import FakeDev


def _chk(sf, s, t):
    # the devices were just polled: their data is fresh at t
    for d in s.devices:
        for k in d.t:
            d.t[k] = t
    return sf.check(s, t)


def _site():
    bms = FakeDev("bms", "bms", {"soc_cpct": 5000, "alarm": 0, "protect": 0})
    pcs = FakeDev("pcs", "pcs", {"p_w": 0, "fault": 0})
    return bms, pcs, Site([bms, pcs])


def test_boot_tripped_until_clean_interval():
    bms, pcs, s = _site()
    sf = Safety({"clean_s": 5})
    t = clock.site_ms()
    assert sf.tripped
    assert not _chk(sf, s, t)
    assert sf.tripped  # clean since now, not long enough
    assert not _chk(sf, s, clock.ticks_add(t, 4999)) and sf.tripped
    _chk(sf, s, clock.ticks_add(t, 5000))
    assert not sf.tripped and sf.reason == ""


def test_alarm_trips_and_interruption_restarts_clean_timer():
    bms, pcs, s = _site()
    sf = Safety({"clean_s": 2})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, clock.ticks_add(t, 2000))
    assert not sf.tripped
    bms.set({"alarm": 4})
    assert _chk(sf, s, clock.ticks_add(t, 2100)) is True
    assert sf.tripped and "alarm" in sf.reason and sf.trips == 1
    bms.set({"alarm": 0})
    _chk(sf, s, clock.ticks_add(t, 2200))
    bms.set({"protect": 1})
    assert _chk(sf, s, clock.ticks_add(t, 3000)) is False  # already tripped
    assert "protect" in sf.reason
    bms.set({"protect": 0})
    _chk(sf, s, clock.ticks_add(t, 3100))
    _chk(sf, s, clock.ticks_add(t, 5000))
    assert sf.tripped  # only 1.9 s clean since the protect bit cleared
    _chk(sf, s, clock.ticks_add(t, 5100))
    assert not sf.tripped


def test_pcs_fault_and_bms_stale():
    bms, pcs, s = _site()
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped
    pcs.set({"fault": 0x10})
    assert _chk(sf, s, t) and "pcs fault" in sf.reason
    pcs.set({"fault": 0})
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped
    bms.is_stale = True
    assert _chk(sf, s, t) and "stale" in sf.reason
    sf2 = Safety({"clean_s": 0, "trip_on_stale": False})
    _chk(sf2, s, t)
    _chk(sf2, s, t)
    assert not sf2.tripped


def test_pcs_stale_and_safety_points_age():
    bms, pcs, s = _site()
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped
    pcs.is_stale = True  # the PCS stopped answering
    assert _chk(sf, s, t) and sf.reason == "pcs_stale"
    pcs.is_stale = False
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped
    # the alarm read keeps failing (exception answers): SOC fresh, alarm ageing
    bms.t["alarm"] = clock.ticks_add(t, -5000)
    assert sf.check(s, t) and sf.reason == "bms alarm stale"


def test_missing_safety_point_trips():
    bms = FakeDev("bms", "bms", {"soc_cpct": 5000, "protect": 0})
    s = Site([bms])
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert sf.tripped and "alarm" in sf.reason
    sf2 = Safety({"clean_s": 0, "trip_on_alarm": False})
    _chk(sf2, s, t)
    _chk(sf2, s, t)
    assert not sf2.tripped


def test_release_countdown_never_negative():
    bms, pcs, s = _site()
    sf = Safety({"clean_s": 1})
    t = clock.site_ms()
    _chk(sf, s, t)  # clean from t; release due at t + 1 s
    st = sf.status(clock.ticks_add(t, 1500))  # asked before the next check releases it
    assert st["tripped"] and st["release_in_s"] == 0
