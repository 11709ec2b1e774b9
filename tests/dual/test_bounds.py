# The local bounds as pure functions (edgefw/bounds.py), without buses: the export floor,
# the PCS range, what the PCS does now as the grid reading sees it, the bound itself and
# the PV to shed under a cloud setpoint or a trip. tests/dual/test_app_bounds.py runs them
# inside the whole loop.
from edgefw import bounds

LIM = {"pcs_charge_max_w": 5000, "pcs_discharge_max_w": 5000, "soc_min_cpct": 1000,
       "soc_max_cpct": 9500, "export_max_w": None, "import_max_w": None}


def _lim(**kw):
    d = dict(LIM)
    d.update(kw)
    return d


def _v(grid_w=1000, bat_w=0, it_w=1000, aux_w=0, soc_cpct=6000, ccl_w=None, dcl_w=None):
    return {"grid_w": grid_w, "bat_w": bat_w, "it_w": it_w, "aux_w": aux_w,
            "soc_cpct": soc_cpct, "ccl_w": ccl_w, "dcl_w": dcl_w}


def test_export_floor():
    p = {"export_allowed": False, "export_margin_w": 50}
    assert bounds.export_floor(LIM, p, {}) == 50
    assert bounds.export_floor(LIM, dict(p, export_allowed=True), {}) is None
    assert bounds.export_floor(_lim(export_max_w=500), dict(p, export_allowed=True), {}) == -500
    # the higher of the two: a margin of import beats -export_max_w
    assert bounds.export_floor(_lim(export_max_w=500), p, {}) == 50
    # no dispatch parameters: the site section says, no margin
    assert bounds.export_floor(LIM, None, {}) == 0
    assert bounds.export_floor(LIM, None, None) == 0
    assert bounds.export_floor(LIM, None, {"export_allowed": True}) is None


def test_pcs_range():
    assert bounds.pcs_range(LIM, _v()) == (-5000, 5000)
    assert bounds.pcs_range(LIM, _v(ccl_w=2000, dcl_w=3000)) == (-2000, 3000)
    assert bounds.pcs_range(LIM, _v(soc_cpct=1000)) == (-5000, 0)   # at SOC min
    assert bounds.pcs_range(LIM, _v(soc_cpct=9500)) == (0, 5000)    # at SOC max
    assert bounds.pcs_range(LIM, _v(soc_cpct=None)) == (0, 0)       # no SOC: 0 W
    assert bounds.pcs_range(LIM, _v(ccl_w=-100, dcl_w=-100)) == (0, 0)  # lo > hi


def test_pcs_now():
    assert bounds.pcs_now(None, None, True, None) is None
    assert bounds.pcs_now(1000, None, True, None) == 1000
    assert bounds.pcs_now(1000, None, True, 800) == 800             # measured lower
    assert bounds.pcs_now(None, None, True, 300) == 300
    # the grid reading is older than the last step up (500 -> 1000): the step before
    assert bounds.pcs_now(1000, 500, False, None) == 500
    assert bounds.pcs_now(1000, 500, True, None) == 1000
    assert bounds.pcs_now(500, 1000, False, None) == 500            # a step down: as is


def test_bound_zero_export_and_limits():
    f = 50
    # 1000 W import, PCS idle: at most 950 W discharge keeps 50 W of import
    assert bounds.bound(8000, _v(), LIM, f, 0, 0, True, False) == (950, "export")
    assert bounds.bound(500, _v(), LIM, f, 0, 0, True, False) == (500, "")
    assert bounds.bound(8000, _v(), LIM, None, 0, 0, True, False) == (5000, "limits")
    # already charging 1000 W with 2000 W export: no more charging asked without chase
    v = _v(grid_w=-2000, bat_w=-1000)
    assert bounds.bound(0, v, LIM, f, -1000, -1000, True, False) == (-1000, "export")
    # with chase (a cloud setpoint): the charge that brings the grid to the floor
    assert bounds.bound(0, v, LIM, f, -1000, -1000, True, True) == (-3050, "export")
    # ... up to the charge limit
    assert bounds.bound(0, _v(grid_w=-9000, bat_w=-1000), LIM, f, -1000, -1000, True,
                        True) == (-5000, "limits")


def test_bound_without_a_grid_value():
    # grid unknown: no discharge, no less charging than acknowledged
    assert bounds.bound(3000, _v(grid_w=None), LIM, 50, 0, 0, False, False) == (0, "export")
    assert bounds.bound(0, _v(grid_w=None), LIM, 50, -700, -700, False, False) == \
        (-700, "export")
    assert bounds.bound(-1000, _v(grid_w=None), LIM, 50, 0, 0, False, False) == (-1000, "")
    # b unknown (nothing acknowledged, no measurement) counts as no grid value
    assert bounds.bound(3000, _v(), LIM, 50, None, None, True, False) == (0, "export")


def test_bound_import_max():
    lim = _lim(import_max_w=500)
    # 3000 W import with the PCS idle: at least 2500 W discharge
    assert bounds.bound(0, _v(grid_w=3000), lim, None, 0, 0, True, False) == \
        (2500, "import_max")
    assert bounds.bound(0, _v(grid_w=3000), lim, None, 0, 0, False, False) == (0, "")


def test_curtail():
    f = 50
    # 7000 W PV, 1000 W load, 5000 W charge at most, 50 W import kept: shed 1050 W
    assert bounds.cloud_curtail(_v(), 7000, LIM, f) == 1050
    assert bounds.cloud_curtail(_v(), 3000, LIM, f) == 0
    assert bounds.cloud_curtail(_v(), 7000, LIM, None) == 0          # no floor
    p = {"export_allowed": False, "export_margin_w": 50}
    assert bounds.trip_curtail(_v(), 3000, p) == 2050               # held to the load
    assert bounds.trip_curtail(_v(it_w=None), 3000, p) == 3050
    assert bounds.trip_curtail(_v(), 3000, dict(p, export_allowed=True)) == 0
    assert bounds.trip_curtail(_v(), 3000, None) == 0
