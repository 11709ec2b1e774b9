"""Safety fixes seen on the wire: the unmodified firmware under micropython (virtual
gateway, host/edgegw/vgw.py) against simulated devices on ptys.

- stopping the loop (app.stop() on the REPL) leaves the PCS at 0 W and stopped;
- a PCS that refuses the interlock's stop gets it again every bus turn, the status
  does not claim it stopped, and the stop lands once the PCS accepts writes again;
- a hold setpoint on a zero-export site (the factory `site` section) is bounded so the
  grid does not export."""
import time

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config
from protocols import modbus_rtu as rtu

SPEED = 5


def _sim(**kw):
    a = dict(pv=3000, it=2200, aux=400, soc_cpct=6000)
    a.update(kw)
    return SimSite(**a)


def _writes(gw, t0):
    n = 0
    for t, frame, rsp in list(gw.devices["pcs"].log):
        if t >= t0 and rtu.decode_request(frame).fc in (5, 6, 15, 16):
            n += 1
    return n


def _running(gw, w):
    return gw.wait(lambda s: not s["safety"]["tripped"] and s["sent_w"] == w
                   and s["run_cmd"] == 1 and gw.sim.p_set_w == w and gw.sim.run == 1,
                   40, points=False)


def test_app_stop_leaves_pcs_at_zero(tmp_path):
    cfg = site_config(control={"mode": "hold", "hold_w": 1200}, safety={"clean_s": 1},
                      site={"export_allowed": True})
    with VirtualGateway(str(tmp_path), cfg, _sim(), speed=SPEED) as gw:
        _running(gw, 1200)
        gw.exec("from edgefw import app\napp.stop()")
        end = time.monotonic() + 10
        while time.monotonic() < end and not (gw.sim.p_set_w == 0 and gw.sim.run == 0):
            time.sleep(0.05)
        assert gw.sim.p_set_w == 0 and gw.sim.run == 0
        # the loop marks itself stopped after the PCS acknowledged both writes, which can
        # be a moment after the simulator applied them (a fresh-clone CI run read
        # running=True in between)
        s = gw.wait(lambda s: not s["running"], 10, interval=0.05, points=False)
        assert not s["running"] and s["sent_w"] == 0 and s["run_cmd"] == 0
        assert s["sp_src"] == "stopped"


def test_refused_stop_retried_on_the_wire(tmp_path):
    cfg = site_config(control={"mode": "hold", "hold_w": 1200}, safety={"clean_s": 1},
                      site={"export_allowed": True})
    with VirtualGateway(str(tmp_path), cfg, _sim(), speed=SPEED) as gw:
        _running(gw, 1200)
        pcs = gw.devices["pcs"]
        pcs.mode = "exception"  # refuses everything, reads included (it answers: alive)
        gw.sim.bms_alarm = 1 << 2
        s = gw.wait(lambda s: s["safety"]["tripped"], 10, interval=0.1, points=False)
        t0 = time.monotonic()
        gw.site_sleep(5)  # refresh_ms (10 s) would send nothing more in it
        n = _writes(gw, t0)
        s = gw.status(points=False)
        assert n >= 5, n
        assert gw.sim.p_set_w == 1200 and gw.sim.run == 1  # it really still runs ...
        assert s["sent_w"] is None and s["run_cmd"] is None  # ... and status says unknown
        assert s["want_w"] == 0 and s["want_run"] == 0 and s["write_fail"] >= 5
        assert s["buses"]["bus1"]["bms"]["ok"] > 0
        pcs.mode = "ok"
        gw.wait(lambda s: s["sent_w"] == 0 and s["run_cmd"] == 0, 10, interval=0.1,
                points=False)
        assert gw.sim.p_set_w == 0 and gw.sim.run == 0


def test_hold_bounded_on_zero_export_site(tmp_path):
    # factory site section: export not allowed. it + aux = 2600 W, no PV: a 5000 W hold
    # would export 2400 W
    cfg = site_config(control={"mode": "hold", "hold_w": 5000}, safety={"clean_s": 1})
    with VirtualGateway(str(tmp_path), cfg, _sim(pv=0), speed=SPEED) as gw:
        s = gw.wait(lambda s: not s["safety"]["tripped"] and s["run_cmd"] == 1
                    and s["sent_w"] and s["bound_by"] == "export", 40, points=False)
        gw.site_sleep(7.5)
        s = gw.status(points=False)
        assert s["bound_by"] == "export"
        assert 0 < gw.sim.p_set_w <= 2600
        g = gw.sim.summary()["grid_w"]
        assert g >= 0, g  # never exporting
