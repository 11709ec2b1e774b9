"""edgegw status / console: from the virtual gateway's REPL and from MQTT telemetry
(a real mosquitto)."""
import json
import os
import subprocess
import time

import pytest
from click.testing import CliRunner

from conftest import VENV_BIN
from edgegw.cli import cli  # first: importing a cmd module alone is circular
from edgegw import cmd_status  # noqa: E402

EDGEGW = os.path.join(VENV_BIN, "edgegw")


def test_fmt_units():
    assert cmd_status.fmt("soc_cpct", 8320) == "83.20 %"
    assert cmd_status.fmt("i_ca", -137) == "-1.37 A"
    assert cmd_status.fmt("u1_dv", 2301) == "230.1 V"
    assert cmd_status.fmt("p_w", -1234) == "-1234 W"
    assert cmd_status.fmt("alarm", 5) == "5" and cmd_status.fmt("x_w", None) == "-"


def test_status_from_the_virtual_gateway(tmp_path):
    vgw = pytest.importorskip("edgegw.vgw")
    with vgw.VirtualGateway(str(tmp_path), speed=10) as gw:
        gw.wait(lambda s: (s.get("site") or {}).get("points", {}).get("bms"), timeout=30)
        r = subprocess.run([EDGEGW, "status", "--port", gw.repl_port, "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["source"] == "repl" and "soc_cpct" in s["site"]["points"]["bms"]
        assert s["buses"]
        r = CliRunner().invoke(cli, ["status", "--port", gw.repl_port])
        assert r.exit_code == 0, r.output
        assert "soc_cpct" in r.output and "site: grid" in r.output
        # the control loop kept running while we used the REPL
        assert gw.status()["running"]


def test_status_from_mqtt():
    from edgegw.mosq import Mosquitto
    import paho.mqtt.client as mqtt
    from protocols import topics
    with Mosquitto() as m:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(m.host, m.port)
        pub.loop_start()
        tel = {"seq": 7, "ts": 1000, "state": "ONLINE", "grid_w": 1200, "pv_w": 3000,
               "it_w": 3900, "aux_w": 300, "bat_w": 0, "soc_cpct": 8320, "sp_w": 0}
        p = subprocess.Popen([EDGEGW, "status", "--mqtt", "%s:%d" % (m.host, m.port),
                              "--device-id", "gw9", "--json", "--timeout", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = ""
        for _ in range(100):
            pub.publish(topics.topic("gw9", topics.TELEMETRY), json.dumps(tel))
            time.sleep(0.1)
            if p.poll() is not None:
                break
        out, err = p.communicate(timeout=20)
        pub.loop_stop()
        pub.disconnect()
        assert p.returncode == 0, err
        s = json.loads(out)
        assert s["site"]["soc_cpct"] == 8320 and s["link"]["state"] == "ONLINE"
        assert "soc 83.20 %" in cmd_status.render(s)
        r = subprocess.run([EDGEGW, "status", "--mqtt", "%s:%d" % (m.host, m.port),
                            "--device-id", "nobody", "--timeout", "0.5"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "--device-id" in r.stderr and "Traceback" not in r.stderr


def test_bad_sources():
    for args, word in ((["status"], "--port"), (["status", "--mqtt", "h:x"], "--mqtt"),
                       (["status", "--mqtt", "localhost"], "--device-id"),
                       (["console"], "--port")):
        r = subprocess.run([EDGEGW] + args, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and word in r.stderr and "Traceback" not in r.stderr, args
    r = CliRunner().invoke(cli, ["console", "--port", "/dev/pts/9", "--print-argv"])
    assert r.output.split()[-4:] == ["connect", "/dev/pts/9", "resume", "repl"]
