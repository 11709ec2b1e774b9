"""edgegw read / scan as a technician runs them: the real CLI in a subprocess on a pty, the
simulated devices of edgegw/simdev.py answering real Modbus RTU frames on the other end
(an SDM630, a flat SunSpec-style PV inverter with live scale factors, and a device with a
real SunSpec model chain: "SunS", common model 1, models 103 and 123, end marker)."""
import json
import os
import pty
import signal
import subprocess
import time
import tty

import pytest

from conftest import VENV_BIN
from edgegw.simdev import SimBus, SimDevice
from protocols import regmap

EDGEGW = os.path.join(VENV_BIN, "edgegw")

SDM = {"u1_dv": 2301, "u2_dv": 2299, "u3_dv": 2310, "i1_ma": 5120, "p_w": -1234, "f_chz": 4999,
       "e_imp_wh": 1234567, "pf_milli": -987}
PV = {"p_w": 4321, "w_sf": -1, "state": 4, "wmax_w": 10000, "wmax_sf": 0, "lim_cpct": 10000,
      "lim_ena": 0, "lim_rvrt_s": 0}


def _str_words(s, n=16):
    b = s.encode().ljust(2 * n, b"\0")
    return [(b[i] << 8) | b[i + 1] for i in range(0, 2 * n, 2)]


def sunspec_chain_device(slave):
    """A SunSpec device as the standard lays it out (marker, then ID/L model headers)."""
    words = [0x5375, 0x6E53, 1, 66] + _str_words("EdgeSim") + _str_words("PV-5K") + [0] * 34
    words += [103, 50] + [0] * 50 + [123, 24] + [0] * 24 + [0xFFFF, 0]
    m = regmap.build({"name": "sunspec_chain", "points": {
        "suns": {"table": "holding", "addr": 40000, "type": "u32"},
        "end": {"table": "holding", "addr": 40000 + len(words) - 1}}})
    dev = SimDevice(m, slave, "pv_inverter")
    for i, w in enumerate(words):
        dev.tables["holding"][40000 + i] = w
    return dev


@pytest.fixture
def line():
    m, s = pty.openpty()
    tty.setraw(m)
    tty.setraw(s)
    devs = {1: SimDevice("sdm630", 1, "grid_meter", values=SDM),
            3: SimDevice("sunspec_pv", 3, "pv_inverter", values=PV),
            5: sunspec_chain_device(5)}
    bus = SimBus(m, list(devs.values())).start()
    yield os.ttyname(s), devs
    bus.stop()
    os.close(m)
    os.close(s)


def edgegw(*args):
    return subprocess.run([EDGEGW] + list(args), capture_output=True, text=True, timeout=120)


def _lines(text):
    return dict(ln.split(None, 1) for ln in text.splitlines() if ln and not ln.startswith("#"))


def test_read_shows_human_units(line):
    port, devs = line
    r = edgegw("read", "--port", port, "--slave", "1", "--map", "sdm630")
    assert r.returncode == 0, r.stderr
    v = _lines(r.stdout)
    assert v["u1_dv"] == "230.1 V" and v["i1_ma"] == "5.120 A" and v["f_chz"] == "49.99 Hz"
    assert v["p_w"] == "-1234 W" and v["pf_milli"] == "-0.987" and v["e_imp_wh"] == "1234567 Wh"
    assert r.stdout.startswith("# ") and "slave 1 sdm630" in r.stdout.splitlines()[0]
    assert "Traceback" not in r.stderr


def test_read_raw_and_json_give_integers(line):
    port, devs = line
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sdm630", "--raw", "--point", "u1_dv",
               "--point", "f_chz")
    assert r.returncode == 0, r.stderr
    assert _lines(r.stdout) == {"u1_dv": "2301", "f_chz": "4999"}
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sdm630", "--json")
    assert r.returncode == 0, r.stderr
    [obj] = [json.loads(x) for x in r.stdout.splitlines()]
    assert obj["slave"] == 1 and obj["map"] == "sdm630" and obj["missing"] == []
    for k, v in SDM.items():
        assert obj["values"][k] == v, (k, obj["values"])


def test_watch_count_reads_n_times(line):
    port, devs = line
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sdm630", "--point", "p_w", "--json",
               "--watch", "0.1", "--count", "3")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["values"] for o in objs] == [{"p_w": -1234}] * 3


def test_watch_sees_changes_and_stops_cleanly_on_ctrl_c(line):
    port, devs = line
    p = subprocess.Popen([EDGEGW, "read", "-p", port, "-s", "1", "--map", "sdm630", "--point",
                          "p_w", "--watch", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("# ")
    assert p.stdout.readline().split() == ["p_w", "-1234", "W"]
    devs[1].values["p_w"] = 777  # the meter's reading changes: a later read shows it
    seen = []
    while ["p_w", "777", "W"] not in seen and len(seen) < 2000:
        seen.append(p.stdout.readline().split())
    assert ["p_w", "777", "W"] in seen
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err and "stopped after" in err


def test_silent_device_bounded_wait_says_what_to_check(line):
    port, devs = line
    devs[1].mode = "silent"
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sdm630", "--timeout", "100",
               "--retries", "2")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: no answer from slave 1"), err
    for what in ("A/B", "baud", "parity", "slave address", "termination"):
        assert what in err[0], (what, err)
    assert devs[1].requests == 3   # 1 try + 2 retries, then it gives up
    r = edgegw("read", "-p", port, "-s", "9", "--map", "sdm630", "--timeout", "50",
               "--retries", "0")   # nobody at that address
    assert r.returncode == 1 and "no answer from slave 9" in r.stderr


def test_exception_names_the_exception_and_register(line):
    port, devs = line
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sunspec_pv")
    assert r.returncode == 1
    assert "exception 2 (illegal data address)" in r.stderr and "holding 40000" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,what", [
    (["--slave", "0", "--map", "sdm630"], "--slave"),
    (["--slave", "1", "--map", "nope"], "--map nope"),
    (["--slave", "1", "--map", "sdm630", "--point", "zz"], "zz"),
    (["--slave", "1", "--map", "sdm630", "--count", "2"], "--count"),
])
def test_bad_arguments_one_line_exit_2(line, args, what):
    port, devs = line
    r = edgegw("read", "-p", port, *args)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.startswith("Error")]
    assert len(err) == 1 and what in err[0] and "Traceback" not in r.stderr, r.stderr
    r = edgegw("read", "-p", "/nonexistent/tty", "-s", "1", "--map", "sdm630")
    assert r.returncode == 2 and r.stderr.startswith("Error: --port /nonexistent/tty")


def test_sunspec_scale_factor_change_at_run_time(line):
    port, devs = line
    pv = devs[3]

    def read():
        r = edgegw("read", "-p", port, "-s", "3", "--map", "sunspec_pv", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["values"]
    assert read()["p_w"] == 4321
    assert pv.tables["holding"][40001] == 43210          # raw 43210 x 10^-1
    pv.values["w_sf"] = -2                              # the inverter changes W_SF
    v = read()
    assert pv.tables["holding"][40001] == 432100 & 0xFFFF and v["w_sf"] == -2
    assert v["p_w"] == 4321                             # a fixed factor would read 432100
    pv.values["w_sf"] = 1
    pv.values["p_w"] = 120000
    v = read()
    assert v["p_w"] == 120000 and pv.tables["holding"][40001] == 12000
    r = edgegw("read", "-p", port, "-s", "3", "--map", "sunspec_pv")
    assert _lines(r.stdout)["p_w"] == "120000 W"
    pv.values["w_sf"] = -32768                          # 0x8000: not implemented
    v = read()
    assert "p_w" not in v and v["w_sf"] == -32768 and v["wmax_w"] == 10000, v
    r = edgegw("read", "-p", port, "-s", "3", "--map", "sunspec_pv", "--point", "p_w")
    assert r.returncode == 0 and _lines(r.stdout) == {"w_sf": "-32768",
                                                      "p_w": "-  (scale factor w_sf not valid)"}


def test_scan_finds_sunspec_and_sdm630_and_config_validates(line, tmp_path):
    port, devs = line
    out = str(tmp_path / "site.json")
    r = edgegw("scan", "-p", port, "--slaves", "1-6", "--timeout", "500", "--retries", "1",
               "--out", out)
    assert r.returncode == 0, r.stderr
    got = {int(ln.split()[1][:-1]): ln for ln in r.stdout.splitlines() if ln.startswith("slave ")}
    assert sorted(got) == [1, 3, 5], r.stdout
    assert "SDM630" in got[1] and got[1].endswith("-> sdm630")
    assert "SunSpec marker at 40000, models 1, 103, 123; EdgeSim PV-5K" in got[5]
    assert got[5].endswith("-> sunspec_pv") and got[3].endswith("-> sunspec_pv")
    assert "3 of 6 addresses answered" in r.stdout
    with open(out) as f:
        cfg = json.load(f)
    devs_cfg = {d["slave"]: d for d in cfg["devices"]}
    assert devs_cfg[1] == {"name": "grid_meter", "role": "grid_meter", "map": "sdm630",
                           "slave": 1, "bus": "bus0"}
    assert devs_cfg[3]["role"] == "pv_inverter" and 5 not in devs_cfg  # one pv inverter
    assert "slave 5" in cfg["note"] and cfg["buses"][0]["baud"] == 9600
    v = edgegw("config", "validate", out)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "valid (1 buses, 2 devices)" in v.stdout


def test_scan_bad_arguments_and_empty_line(line, tmp_path):
    port, devs = line
    r = edgegw("scan", "-p", port, "--slaves", "0-300")
    assert r.returncode == 2 and r.stderr.startswith("Error: --slaves")
    r = edgegw("scan", "-p", port, "--out", str(tmp_path / "no" / "x.json"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    for d in devs.values():
        d.mode = "silent"
    r = edgegw("scan", "-p", port, "--slaves", "1-3", "--timeout", "50")
    assert r.returncode == 1 and "0 of 3 addresses answered" in r.stdout
    assert "A/B" in r.stderr and "Traceback" not in r.stderr


# An independent peer: pymodbus's server (RTU framing over TCP), its SDM630 image written
# with struct's IEEE float32 (not our regmap), read through a socket:// URL.
PYMODBUS_SERVER = r"""
import asyncio, json, sys
from pymodbus import FramerType
from pymodbus.server import StartAsyncTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
img = {int(a): v for a, v in json.loads(sys.argv[2]).items()}
blocks = [[SimData(65534, values=[False], datatype=DataType.BITS)],
          [SimData(65534, values=[False], datatype=DataType.BITS)],
          [SimData(65534, values=[0], datatype=DataType.REGISTERS)],
          [SimData(0, values=[img.get(a, 0) for a in range(0x158)], datatype=DataType.REGISTERS)]]
dev = SimDevice(int(sys.argv[3]), simdata=tuple(blocks))
asyncio.run(StartAsyncTcpServer(context=[dev], address=("127.0.0.1", int(sys.argv[1])),
                                framer=FramerType.RTU))
"""


def test_read_from_pymodbus_over_socket_url(tmp_path):
    import socket
    import struct
    import sys
    vals = {0x00: 230.5, 0x02: 229.25, 0x04: 231.0, 0x06: 5.125, 0x34: -1500.0, 0x3E: -0.95,
            0x46: 50.01, 0x48: 1234.567}
    img = {}
    for a, f in vals.items():
        hi, lo = struct.unpack(">HH", struct.pack(">f", f))
        img[a], img[a + 1] = hi, lo
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-c", PYMODBUS_SERVER, str(port), json.dumps(img),
                             "4"], stderr=subprocess.PIPE)
    try:
        url = "socket://127.0.0.1:%d" % port
        for _ in range(100):   # the server needs a moment to listen
            if proc.poll() is not None:
                pytest.fail("pymodbus server exited: %s" % proc.stderr.read().decode()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        r = edgegw("read", "-p", url, "-s", "4", "--map", "sdm630")
        assert r.returncode == 0, r.stderr
        v = _lines(r.stdout)
        assert v["u1_dv"] == "230.5 V" and v["u2_dv"] == "229.3 V" and v["i1_ma"] == "5.125 A"
        assert v["p_w"] == "-1500 W" and v["pf_milli"] == "-0.950" and v["f_chz"] == "50.01 Hz"
        assert v["e_imp_wh"] == "1234567 Wh"
        r = edgegw("scan", "-p", url, "--slaves", "3-4", "--timeout", "500", "--retries", "1",
                   "--json")
        assert r.returncode == 0, r.stderr
        assert [(d["slave"], d["map"]) for d in json.loads(r.stdout)["devices"]] == [(4, "sdm630")]
    finally:
        proc.terminate()
        proc.wait(5)


def test_garbled_answers_say_what_to_check(line):
    port, devs = line
    devs[1].mode = "crc"
    r = edgegw("read", "-p", port, "-s", "1", "--map", "sdm630", "--retries", "1")
    assert r.returncode == 1 and devs[1].requests == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "garbled frames (CRC/framing)" in err[0], err
    assert "termination" in err[0] and "one master" in err[0]
