# Topic names and payload validators (runs on CPython and MicroPython).
import json

from protocols import topics as T


def test_topic_names_and_split():
    assert T.topic("gw-1", T.TELEMETRY) == "edgegw/gw-1/telemetry"
    assert T.topic("gw-1", T.CMD_SETPOINT) == "edgegw/gw-1/cmd/setpoint"
    assert T.split("edgegw/gw-1/compute/forecast") == ("gw-1", "compute/forecast")
    assert T.split("other/gw-1/x") == (None, None)
    assert T.split("edgegw//x") == (None, None)
    assert T.COMMANDS[T.FORECAST] == "forecast"


def test_setpoint_bounds():
    assert T.check_setpoint(T.setpoint_cmd(1, 2, 3, -1500), -5000, 5000) == []
    e = T.check_setpoint(T.setpoint_cmd(1, 2, 3, 6000), -5000, 5000)
    assert e and e[0].startswith("p_w: 6000 out of bounds")
    assert T.check_setpoint({"p_w": 1.5})[0].startswith("p_w:")
    assert T.check_setpoint({"p_w": True})[0].startswith("p_w:")


def test_schedule_validation_names_the_field():
    ok = [{"t0": 100, "t1": 200, "soc_cpct": 8000}, {"t0": 200, "t1": 300, "pmin_w": -100,
                                                     "pmax_w": 100}]
    assert T.check_schedule({"windows": ok}) == []
    assert T.check_schedule({"windows": [{"t0": 5, "t1": 5}]})[0].startswith("windows[0].t1")
    e = T.check_schedule({"windows": [{"t0": 1, "t1": 50}, {"t0": 40, "t1": 60}]})
    assert e[0].startswith("windows[1].t0")
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "soc": 1}]})[0] == \
        "windows[0].soc: unknown field"
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "pmin_w": 5, "pmax_w": 1}]})
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2}] * 49})
    # a window may carry its own expiry, as dispatch.set_schedule takes it
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "exp": 2}]}) == []
    # and its own zero-export aim, never into export
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "aim_w": 0}]}) == []
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "aim_w": -1}]})[0].startswith(
        "windows[0].aim_w")
    assert T.check_schedule({"windows": [{"t0": 1, "t1": 2, "exp": "x"}]})[0].startswith(
        "windows[0].exp")


def test_ring_segments_bounded_by_ram():
    from edgefw import link
    e = link.validate_link_cfg({"host": "h", "ring_kb": 4096, "ring_segs": 8})
    assert any(x.startswith("link.ring_kb:") for x in e), e
    assert not any(x.startswith("link.ring") for x in link.validate_link_cfg(
        {"host": "h", "ring_kb": 1024, "ring_segs": 64}))


def test_forecast_validation():
    f = {"seq": 1, "ts": 1, "exp": 2, "t0": 0, "step_s": 60, "load_w": [1, 2, 3],
         "measured_w": 4, "source": "rapl"}
    assert T.check_forecast(f) == []
    f["load_w"] = [1, -2]
    assert T.check_forecast(f)[0].startswith("load_w[1]")
    f["load_w"] = []
    assert T.check_forecast(f)[0].startswith("load_w")
    # optional PV and aux forecasts on the same steps (None: not sent)
    f["load_w"] = [1, 2, 3]
    f["pv_w"] = [0, 5000, 9000]
    f["aux_w"] = None
    assert T.check_forecast(f) == []
    f["aux_w"] = [1, True]
    assert T.check_forecast(f)[0].startswith("aux_w[1]")
    f["aux_w"] = "x"
    assert T.check_forecast(f)[0].startswith("aux_w")


def test_telemetry_check_and_json_round_trip():
    d = {"seq": 7, "ts": 1700000000, "state": "ONLINE", "grid_w": -12, "e": {"pv_wh": 5}}
    assert T.check_telemetry(json.loads(json.dumps(d))) == []
    d["state"] = "ON"
    d["pv_w"] = 1.0
    e = T.check_telemetry(d)
    assert len(e) == 2
    # null W: not known now (no PV inverter limit, a point missing)
    assert T.check_telemetry({"seq": 1, "ts": 2, "state": "FALLBACK", "pv_limit_w": None,
                              "aux_w": None}) == []


def test_telemetry_fields_name_every_counter_and_ledger_field():
    f = T.telemetry_fields()
    assert "e.bat_green_wh" in f and "e.it_green_wh" in f
    assert "g.cur.cfe_cpct" in f and "g.hour.cfe_cpct" in f
    for n in T.LEDGER_FIELDS:
        assert "g.hour." + n in f


def test_builders():
    a = T.ack(5, 10, "setpoint", False, "stale", "ONLINE")
    assert a == {"seq": 5, "ts": 10, "kind": "setpoint", "ok": False, "reason": "stale",
                 "state": "ONLINE"}
    ev = T.event(3, 10, "state", {"from": "ONLINE", "to": "GRACE", "seq": 99})
    assert ev["seq"] == 3 and ev["to"] == "GRACE"
    assert T.status(False, 5)["status"] == "offline"
