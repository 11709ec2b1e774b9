# Interlock with several packs and PCS: a silent pack or faulted PCS drops out, the last
# one trips the site; a pack alarm trips the site or (pack_trip "pcs") only its PCS.
from edgefw import clock
from edgefw.safety import Safety
from test_safety import _chk
from test_site_multipack import _site


def test_silent_pack_no_trip_last_pack_trips():
    devs, s = _site()
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped and sf.pcs_off == {}
    devs[6].is_stale = True                      # b2 silent: pcs1 still has b1
    assert not _chk(sf, s, t) and not sf.tripped and sf.pcs_off == {}
    devs[7].is_stale = True                      # b3 silent: pcs2 has no pack left
    assert not _chk(sf, s, t) and not sf.tripped
    assert sf.stopped("pcs2") and not sf.stopped("pcs1")
    assert sf.pcs_off["pcs2"] == "b3: bms alarm stale"
    devs[5].is_stale = True                      # the last pack: the site trips
    assert _chk(sf, s, t) and sf.reason == "b3: bms alarm stale"  # last in config order


def test_faulted_pcs_stopped_last_trips_site_and_release_after_clean():
    devs, s = _site()
    sf = Safety({"clean_s": 2})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, clock.ticks_add(t, 2000))
    assert not sf.tripped
    devs[4].set({"fault": 8})
    assert not _chk(sf, s, clock.ticks_add(t, 2100))
    assert sf.stopped("pcs2") and sf.pcs_off["pcs2"] == "pcs2: pcs fault 0x8"
    assert sf.status()["pcs_off"] == {"pcs2": "pcs2: pcs fault 0x8"}
    devs[3].set({"fault": 1})
    assert _chk(sf, s, clock.ticks_add(t, 2200)) and sf.reason == "pcs2: pcs fault 0x8"
    devs[3].set({"fault": 0})
    devs[4].set({"fault": 0})
    _chk(sf, s, clock.ticks_add(t, 2300))
    _chk(sf, s, clock.ticks_add(t, 4300))
    assert not sf.tripped and sf.pcs_off == {}


def test_pack_alarm_trips_site_or_its_pcs():
    devs, s = _site()
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    _chk(sf, s, t)
    devs[7].set({"alarm": 2})
    assert _chk(sf, s, t) and sf.reason == "b3: bms alarm 0x2"
    devs, s = _site()
    sf = Safety({"clean_s": 0}, "pcs")
    _chk(sf, s, t)
    _chk(sf, s, t)
    devs[7].set({"protect": 1})
    assert not _chk(sf, s, t) and not sf.tripped
    assert sf.stopped("pcs2") and sf.pcs_off["pcs2"] == "b3: bms protect 0x1"
    assert not sf.stopped("pcs1")


def test_pcs_waiting_for_its_first_answer_at_boot_is_not_a_trip():
    # both PCS unread at boot: stopped (the site holds its boot trip), but not counted as
    # PCS trips; a fault after the boot hold is
    devs, s = _site()
    for d in devs[3:5]:
        del d.values["fault"]
    sf = Safety({"clean_s": 0})
    t = clock.site_ms()
    _chk(sf, s, t)
    assert sf.tripped and sf.stopped("pcs1") and sf.stopped("pcs2")
    for d in devs[3:5]:
        d.set({"fault": 0})
    _chk(sf, s, t)
    _chk(sf, s, t)
    assert not sf.tripped and sf.pcs_off == {} and sf.pcs_trips == 0
    assert "pcs_trips" not in sf.status()
    devs[4].set({"fault": 8})
    _chk(sf, s, t)
    assert sf.pcs_trips == 1 and sf.status()["pcs_trips"] == 1
