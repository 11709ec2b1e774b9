# Local limits no setpoint source (cloud, hold, dispatch) may pass, and the PV to shed
# under them (docs/firmware.md "Local bounds"). Pure: values in, values out; the control
# tick hands in what the PCS acknowledged and the site's latest values (tests/dual/
# test_bounds.py runs them without buses).
from edgefw.fx import clamp


def export_floor(lim, params, site_cfg):
    """Lowest grid power (W, - = export) any setpoint may lead to, or None: -export_max_w,
    and with export not allowed (site.export_allowed false) the dispatch export_margin_w
    of import. params: the dispatcher's (None without one), site_cfg: config "site"."""
    f = None
    x = lim["export_max_w"]
    if x is not None:
        f = -x
    if params is not None:
        ok, margin = params["export_allowed"], params["export_margin_w"]
    else:
        ok, margin = (site_cfg or {}).get("export_allowed") is True, 0
    if not ok and (f is None or margin > f):
        f = margin
    return f


def pcs_range(lim, v):
    """(lo, hi) W the PCS may be set to now: PCS limits, BMS charge/discharge limits,
    no discharge at/below SOC min, no charge at/above SOC max; no SOC: (0, 0)."""
    lo = -lim["pcs_charge_max_w"]
    hi = lim["pcs_discharge_max_w"]
    if v["ccl_w"] is not None and -v["ccl_w"] > lo:
        lo = -v["ccl_w"]
    if v["dcl_w"] is not None and v["dcl_w"] < hi:
        hi = v["dcl_w"]
    soc = v["soc_cpct"]
    if soc is None:
        return 0, 0
    if soc <= lim["soc_min_cpct"] and hi > 0:
        hi = 0
    if soc >= lim["soc_max_cpct"] and lo < 0:
        lo = 0
    if lo > hi:
        return 0, 0
    return lo, hi


def pcs_now(a, prev_w, fresh, bat_w):
    """What the PCS does now (W) as far as the grid reading knows it: the lowest of the
    acknowledged setpoint a (0 while stopped; None = unknown), the measured bat_w (None =
    not fresh) and, while the grid reading is older than the last acknowledged step up
    (fresh false), the setpoint before that step, prev_w (meter and PCS are read at
    different times). None when neither a nor bat_w is known."""
    b = a
    if a is not None and prev_w is not None and prev_w < a and not fresh:
        b = prev_w  # the meter still shows the PCS before its last step up
    if bat_w is not None and (b is None or bat_w < b):
        b = bat_w
    return b


def bound(sp, v, lim, floor, a, b, grid_ok, chase):
    """(sp, what bound it: "" / "import_max" / "export" / "limits"). Export: grid after =
    grid now + (b - sp) must stay at or above floor (export_floor(); None = no floor),
    b = pcs_now(). Without chase (dispatch, hold) the bound never asks for more charging
    than the PCS does now: the dispatcher charges the surplus itself. chase (a cloud
    setpoint in force: nothing else would; the caller passes it only with a fresh bat_w
    and a grid reading newer than the last setpoint change) charges, from the grid and
    the measured p_w, up to the PCS/BMS limits and SOC max; PV beyond that is curtailed
    (cloud_curtail). With the grid value not ok or b unknown: no discharge, and no less
    charging than now (sp <= min(a, 0)). a: the acknowledged setpoint (0 while stopped)."""
    why = ""
    gok = grid_ok and b is not None
    g = v["grid_w"]
    if gok and lim["import_max_w"] is not None and sp < g + b - lim["import_max_w"]:
        sp = g + b - lim["import_max_w"]
        why = "import_max"
    lo, hi = pcs_range(lim, v)
    if floor is not None:
        if gok:
            x = g + b - floor
            keep = b if b < 0 else 0
            if x < keep:
                x = keep
                if chase:
                    # the meter's grid and the PCS's measured power (both after the
                    # last change): the charge that brings the grid to the floor
                    xc = g + v["bat_w"] - floor
                    if xc < keep:
                        x = xc
        else:
            x = a if a is not None and a < 0 else 0
        if sp > x:
            sp = x
            why = "export"
    c = clamp(sp, lo, hi)
    if c != sp:
        why = "limits"
    return c, why


def cloud_curtail(v, pv, lim, floor):
    """PV to shed (W) under a cloud setpoint on a site with an export floor: what the
    load, the battery at its charge limit (the bound charges up to it) and the floor
    cannot take. pv = the PV available (behind the limit: pvlimit's estimate). The
    limit this gives (estimate - curtail) does not depend on the estimate: a fixed
    point, as with the dispatcher's curtail_w (docs/firmware.md)."""
    if floor is None:
        return 0
    lo = pcs_range(lim, v)[0]
    x = pv - (v["it_w"] or 0) - (v["aux_w"] or 0) + lo + floor
    return x if x > 0 else 0


def trip_curtail(v, est, params):
    """PV to shed while tripped (PCS at 0 W): on a zero-export site all of the PV
    estimate est above the load less the export margin; none where export is allowed
    (or without dispatch parameters)."""
    if params is None or params["export_allowed"]:
        return 0
    x = est - (v["it_w"] or 0) - (v["aux_w"] or 0) + params["export_margin_w"]
    return x if x > 0 else 0
