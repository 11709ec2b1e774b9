# Site model with several battery packs and PCS (packs.py): energy-weighted SOC, limits
# summed over healthy packs, cell min/max across packs, a silent pack or faulted PCS
# drops out (limits shrink), none left: stale.
from edgefw.site import Site, Q_OK, Q_DERIVED, Q_STALE
from test_site import FakeDev


def _pack(name, soc, ccl_ca, cap, pcs, cmin=3300, cmax=3350):
    d = FakeDev(name, "bms", {"soc_cpct": soc, "v_cv": 5000, "i_ca": 0, "ccl_ca": ccl_ca,
                              "dcl_ca": ccl_ca, "alarm": 0, "protect": 0,
                              "cell_min_mv": cmin, "cell_max_mv": cmax})
    d.cap_wh, d.feeds, d.rating_w = cap, pcs, None
    return d


def _pcs(name, rating, p_w):
    d = FakeDev(name, "pcs", {"p_w": p_w, "fault": 0})
    d.cap_wh, d.feeds, d.rating_w = None, None, rating
    return d


def _site():
    devs = [FakeDev("grid", "grid_meter", {"p_w": 1000}),
            FakeDev("it", "load_meter", {"p_w": 3000}),
            FakeDev("pv", "pv_meter", {"p_w": 0}),
            _pcs("pcs1", 10000, 1500), _pcs("pcs2", 5000, 500),
            _pack("b1", 8000, 10000, 10000, "pcs1", 3310, 3340),   # 5000 W limits each
            _pack("b2", 5000, 10000, 10000, "pcs1", 3290, 3360),
            _pack("b3", 2000, 10000, 20000, "pcs2", 3300, 3380)]
    for d in devs:
        for a in ("cap_wh", "feeds", "rating_w"):
            if not hasattr(d, a):
                setattr(d, a, None)
    return devs, Site(devs, stale_polls=3)


def test_aggregate_all_healthy():
    devs, s = _site()
    v = s.update()
    # (8000 * 10 + 5000 * 10 + 2000 * 20) / 40 kWh
    assert v["soc_cpct"] == 4250 and s.q["soc_cpct"] == Q_OK
    # packs 15000 W; pcs1 min(10000, 10000) + pcs2 min(5000, 5000)
    assert v["ccl_w"] == 15000 and v["dcl_w"] == 15000
    assert v["bat_w"] == 2000 and s.q["bat_w"] == Q_OK
    m = s.snapshot(points=False)["multi"]
    assert m["cell_min_mv"] == 3290 and m["cell_max_mv"] == 3380
    assert m["packs"] == {"b1": "ok", "b2": "ok", "b3": "ok"}
    assert m["pcs"]["pcs1"] == {"ok": True, "chg_w": 10000, "dis_w": 10000}


def test_silent_pack_reduces_limits_not_soc_of_the_others():
    devs, s = _site()
    devs[6].is_stale = True   # b2 silent
    v = s.update()
    assert v["soc_cpct"] == 4000 and s.q["soc_cpct"] == Q_OK   # (80 + 40) / 30
    assert v["ccl_w"] == 10000 and v["dcl_w"] == 10000
    assert s.packs.state["b2"] == "stale"
    assert s.packs.chg == [5000, 5000]


def test_faulted_pcs_drops_out_and_all_packs_stale_is_stale():
    devs, s = _site()
    devs[4].set({"fault": 4})
    v = s.update()
    assert s.packs.avail == {"pcs1": True, "pcs2": False}
    assert v["ccl_w"] == 10000 and s.packs.chg == [10000, 0]
    devs[4].is_stale = True   # pcs2 silent: its power unknown, counted 0, derived
    v = s.update()
    assert v["bat_w"] == 1500 and s.q["bat_w"] == Q_DERIVED
    for d in devs[5:]:
        d.is_stale = True
    v = s.update()
    assert s.q["soc_cpct"] == Q_STALE and s.q["ccl_w"] == Q_STALE
    assert not s.ok("soc_cpct")


def test_pack_alarm_drops_the_pack_and_its_pcs():
    devs, s = _site()
    devs[7].set({"alarm": 1})
    v = s.update()
    assert s.packs.state["b3"] == "alarm" and s.packs.avail["pcs2"] is False
    assert v["soc_cpct"] == 6500 and v["dcl_w"] == 10000

