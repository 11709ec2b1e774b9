"""PV curtailment closes the loop on a zero-export site: the unmodified firmware under
micropython (virtual gateway, host/edgegw/vgw.py) with simulated devices on ptys.

A full battery (above soc_max: it takes no charge), 6 kW of sun, 2.3 kW of load, export
not allowed (the factory `site` section). With a PV inverter (role pv_inverter, map
sunspec_pv, no PV meter: its p_w is the PV) the dispatcher's curtail_w becomes a
WMaxLimPct limit and the grid stays out of export; the same site with a PV meter only
(nothing applies curtail_w) exports the surplus, so the first test needs the actuator."""
import time

from edgefw.pvlimit import tol_w
from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config

SPEED = 5
INV_W = 8000


def _sim():
    return SimSite(pv=6000, it=2000, aux=300, soc_cpct=9600, pv_inv_w=INV_W)


def _cfg(inverter):
    cfg = site_config(safety={"clean_s": 1})
    devs = [d for d in cfg["devices"] if d["role"] != "pv_meter"] if inverter \
        else cfg["devices"]
    if inverter:
        devs.append({"name": "pvinv", "role": "pv_inverter", "map": "sunspec_pv",
                     "slave": 5, "bus": "bus0", "period_ms": 1000})
    cfg["devices"] = devs
    return cfg


def _grid_samples(gw, n=25):
    # the simulated site's true grid power, sampled over several control periods
    out = []
    for _ in range(n):
        out.append(gw.sim.summary()["grid_w"])
        time.sleep(0.1)
    return out


def test_inverter_limit_stops_export(tmp_path):
    with VirtualGateway(str(tmp_path), _cfg(True), _sim(), speed=SPEED) as gw:
        # settled: a limit asked for, both registers acknowledged, PV at the limit
        s = gw.wait(lambda s: not s["safety"]["tripped"] and s["pv_limit_w"] is not None
                    and s["pv_lim"]["ack"] == s["pv_lim"]["want"]
                    and s["pv_lim"]["want"][1] == 1, 40, points=False)
        gw.wait(lambda s: s["sp_src"].startswith("dispatch") and gw.sim.lim_ena == 1
                and gw.sim.summary()["grid_w"] >= 0, 20, points=False)
        time.sleep(1.0)  # a few control periods at the limit
        grid = _grid_samples(gw)
        s = gw.status(points=False)
        # never exporting beyond the limit's dead band below the dispatch margin
        assert min(grid) >= -tol_w(INV_W), grid
        # the surplus went to the limit, not to the grid: PV near the load, not 6 kW
        pv = gw.sim.summary()["pv_w"]
        assert pv < 2300 + tol_w(INV_W) + 100, pv
        assert s["curtail_w"] > 3000 and s["pv_limit_w"] is not None
        # the registers on the wire: WMaxLimPct (0.01 % of WMax, rounded down) and
        # WMaxLim_Ena = 1
        lims = [c for t, role, c in list(gw.sim.writes) if role == "pv_inverter"]
        assert any("lim_cpct" in c for c in lims) and {"lim_ena": 1} in lims, lims
        assert gw.sim.lim_cpct * INV_W <= s["pv_limit_w"] * 10000
        # a steady site does not rewrite the limit every step (bus writes bounded)
        n0 = len(gw.devices["pvinv"].writes)
        time.sleep(1.0)
        assert len(gw.devices["pvinv"].writes) - n0 <= 2


def test_trip_holds_pv_to_the_load(tmp_path):
    # half-full battery: the surplus goes into it (no limit needed); a BMS alarm trips,
    # the PCS stops, and the surplus the battery took must not go to the grid: the PV is
    # limited to the load (less the export margin) until the trip clears
    sim = SimSite(pv=6000, it=2000, aux=300, soc_cpct=5000, pv_inv_w=INV_W)
    with VirtualGateway(str(tmp_path), _cfg(True), sim, speed=SPEED) as gw:
        gw.wait(lambda s: not s["safety"]["tripped"] and s["sp_src"].startswith("dispatch")
                and gw.sim.summary()["bat_w"] < -3000, 40, points=False)
        gw.sim.bms_alarm = 1 << 2
        gw.wait(lambda s: s["safety"]["tripped"] and s["pv_lim"]["ack"] == s["pv_lim"]["want"]
                and s["pv_lim"]["want"][1] == 1 and gw.sim.lim_ena == 1, 30, points=False)
        time.sleep(1.0)
        grid = _grid_samples(gw, 15)
        assert abs(gw.sim.summary()["bat_w"]) < 100
        assert min(grid) >= -tol_w(INV_W), grid
        assert gw.sim.summary()["pv_w"] < 2300 + tol_w(INV_W) + 100


def test_without_inverter_the_site_exports(tmp_path):
    with VirtualGateway(str(tmp_path), _cfg(False), _sim(), speed=SPEED) as gw:
        gw.wait(lambda s: not s["safety"]["tripped"] and s["sp_src"].startswith("dispatch")
                and s["curtail_w"] > 3000, 40, points=False)
        time.sleep(1.0)
        grid = _grid_samples(gw, 10)
        # nothing applies curtail_w: the surplus (about 3.7 kW) goes out
        assert max(grid) < -3000, grid
