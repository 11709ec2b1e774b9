"""edgegw trace capture/decode/stats/export and edgegw replay: the reference Seplos capture,
framing, Ctrl-C safety, faults, and a capture -> decode -> replay round trip over ptys with
pymodbus as the independent peer (server while capturing, client as the gateway)."""
import asyncio
import csv
import io
import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
import tty
import warnings

import pytest
from click.testing import CliRunner

from conftest import REPO, VENV_BIN
from edgegw.cli import cli  # first: importing a cmd module alone is circular
from edgegw import cmd_trace, replayer  # noqa: E402
from protocols import modbus_rtu as rtu  # noqa: E402
from protocols import regmap  # noqa: E402

EDGEGW = os.path.join(VENV_BIN, "edgegw")
SEPLOS = os.path.join(REPO, "tests", "data", "traces", "seplos-v3-SG16S200A-all-frames.txt")


class Bus:
    """An RS-485 bus of ptys: what one node writes, every other node hears."""

    def __init__(self, n):
        self.m, self.s, self.paths = [], [], []
        for _ in range(n):
            m, s = pty.openpty()
            tty.setraw(m)
            tty.setraw(s)
            self.m.append(m)
            self.s.append(s)
            self.paths.append(os.ttyname(s))
        self.run = True
        self.th = threading.Thread(target=self._pump, daemon=True)
        self.th.start()

    def _pump(self):
        while self.run:
            r, _, _ = select.select(self.m, [], [], 0.1)
            for fd in r:
                try:
                    d = os.read(fd, 4096)
                except OSError:
                    continue
                for o in self.m:
                    if o != fd:
                        try:
                            os.write(o, d)
                        except OSError:
                            pass

    def close(self):
        self.run = False
        self.th.join(2)
        for fd in self.m + self.s:
            os.close(fd)


@pytest.fixture
def bus():
    b = Bus(3)
    yield b
    b.close()


# ---- reference capture --------------------------------------------------------------------

def _decode_json(*args):
    r = CliRunner().invoke(cli, ["trace", "decode", SEPLOS, "--json"] + list(args))
    assert r.exit_code == 0, r.output
    return [json.loads(x) for x in r.output.splitlines()]


def test_decode_seplos_reference():
    dec = _decode_json("--map", "1=seplos_v3")
    assert len(dec) == 44
    pia = [e for e in dec if e["dir"] == "rsp" and e.get("slave") == 1 and e.get("addr") == 0x1000]
    v = pia[0]["values"]
    # the reference README: 53.25 V, -1.37 A, SOC 83.2 %, SOH 99.9 %, 10 cycles, 180 A limits
    assert (v["v_cv"], v["i_ca"], v["soc_cpct"], v["soh_cpct"], v["cycles"]) == \
        (5325, -137, 8320, 9990, 10)
    assert v["ccl_ca"] == 18000 and v["dcl_ca"] == 18000
    exc = [e for e in dec if e.get("exc")]
    assert len(exc) == 6 and all(e["exc"] == 2 for e in exc)
    assert pia[0]["device"] == "seplos_v3@1" and pia[0]["latency_us"] == 5000


def test_stats_and_export_reference(tmp_path):
    r = CliRunner().invoke(cli, ["trace", "stats", SEPLOS, "--json"])
    s = json.loads(r.output)
    by = {d["slave"]: d for d in s["devices"]}
    assert by[0]["requests"] == 12 and by[0]["exceptions"] == 4 and by[0]["timeouts"] == 0
    assert by[1]["exceptions"] == 2 and by[224]["requests"] == 4
    assert by[1]["latency_ms_p50"] == 5.0 and by[1]["latency_ms_p99"] == 5.0
    out = tmp_path / "v.csv"
    r = CliRunner().invoke(cli, ["trace", "export", SEPLOS, "--csv", "--map", "1=seplos_v3",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out)))
    soc = [x for x in rows if x["point"] == "soc_cpct"]
    assert [x["value"] for x in soc] == ["8320", "8320"]
    r = CliRunner().invoke(cli, ["trace", "export", SEPLOS, "--csv", "--frames"])
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 44 and rows[1]["exc"] == "" and rows[3]["exc"] == "2"


def test_bad_arguments_name_the_argument(tmp_path):
    cases = [
        (["trace", "decode", SEPLOS, "--map", "x=sdm630"], "--map"),
        (["trace", "decode", SEPLOS, "--map", "1=nosuchmap"], "--map"),
        (["trace", "stats", str(tmp_path / "none.jsonl")], "TRACE"),
        (["trace", "capture", "--port", str(tmp_path / "ttyNONE")], "--port"),
        (["replay", SEPLOS, "--port", "loop://", "--silent", "3-10"], "--silent"),
        (["replay", SEPLOS, "--port", "loop://", "--drop", "2"], "--drop"),
        (["replay", SEPLOS, "--port", "loop://", "--transport-us", "fast"], "--transport-us"),
    ]
    bad = tmp_path / "f.json"
    bad.write_text('{"drop": 0.1, "jitter": 3}')
    cases.append((["replay", SEPLOS, "--port", "loop://", "--faults", str(bad)], "jitter"))
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    cases.append((["trace", "decode", str(junk)], "TRACE"))
    for args, word in cases:
        r = subprocess.run([EDGEGW] + args, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, args
        assert word in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


# ---- framing ----------------------------------------------------------------------------------

class ListWriter:
    def __init__(self):
        self.recs = []

    def write(self, rec):
        self.recs.append(rec)


def test_capture_classifies_and_cuts_glued_frames():
    w = ListWriter()
    cap = cmd_trace.Capture(w, 9600)
    req = rtu.encode_request(2, 4, 0x0034, 2)
    rsp = rtu.encode_response(2, 4, [0x4499, 0x4000])
    wr = rtu.encode_request(1, 6, 0x0100, 1, 500)
    t = 0
    cap.feed(req, t)
    t += 50000
    cap.feed(rsp, t)                      # silence closes the request
    t += 50000
    cap.feed(wr, t)                       # silence closes the response
    t += 50000
    cap.feed(wr + req, t)                 # an FC6 echo glued to the next request
    cap.poll(t + 10000)
    cap.close()
    dirs = [(r["dir"], r["hex"]) for r in w.recs]
    assert dirs == [("req", req.hex()), ("rsp", rsp.hex()), ("req", wr.hex()),
                    ("rsp", wr.hex()), ("req", req.hex())]
    assert w.recs[1]["t_us"] == 50000 and w.recs[3]["flags"] == ["len"]
    cap2 = cmd_trace.Capture(ListWriter(), 9600)
    cap2.feed(b"\x01\x02\x03", 0)
    cap2.close()
    assert cap2.w.recs[0]["dir"] == "junk" and "short" in cap2.w.recs[0]["flags"]


def test_capture_subprocess_ctrl_c_loses_nothing(bus, tmp_path):
    out = tmp_path / "c.jsonl"
    p = subprocess.Popen([EDGEGW, "trace", "capture", "--port", bus.paths[2], "--baud", "9600",
                          "--out", str(out)], stderr=subprocess.PIPE, text=True)
    _wait_for_header(out)
    frames = []
    for i in range(20):
        f = rtu.encode_request(1 + i % 3, 3, i, 1)
        frames.append(f)
        os.write(bus.s[0], f)
        time.sleep(0.02)
    # the last frame is still open (no silence yet) when Ctrl-C arrives
    last = rtu.encode_request(9, 4, 0x1000, 17)
    os.write(bus.s[0], last)
    time.sleep(0.001)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=10)[1]
    assert p.returncode == 0, err
    assert "Traceback" not in err and "21 frames" in err
    from protocols import trace
    h, recs = trace.read(str(out))
    recs = list(recs)
    assert h["baud"] == 9600 and h["source"] == bus.paths[2]
    assert [r["hex"] for r in recs] == [f.hex() for f in frames + [last]]
    assert all(r["dir"] == "req" and "crc" not in r["flags"] for r in recs)


def _wait_for_header(path, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return
        time.sleep(0.02)
    raise AssertionError("capture did not start")


# ---- replayer decisions -----------------------------------------------------------------------

def _records():
    rq = rtu.encode_request(2, 4, 0, 4)
    rs1 = rtu.encode_response(2, 4, [1, 2, 3, 4])
    rs2 = rtu.encode_response(2, 4, [5, 6, 7, 8])
    char = rtu.char_us(9600)
    recs, t = [], 0
    for rs in (rs1, rs2):
        t += 100000 + len(rq) * char
        recs.append({"t_us": t, "bus": "b", "dir": "req", "hex": rq.hex(), "flags": []})
        t += 7000 + len(rs) * char
        recs.append({"t_us": t, "bus": "b", "dir": "rsp", "hex": rs.hex(), "flags": []})
    return recs, rq, rs1, rs2


def test_replayer_answers():
    recs, rq, rs1, rs2 = _records()
    r = replayer.Replayer(recs, 9600)
    assert r.respond(rq) == (rs1, 7000)
    assert r.respond(rq) == (rs2, 7000)          # recordings played in turn
    assert r.respond(rq) == (rs1, 7000)
    sub = rtu.encode_request(2, 4, 1, 2)           # composed from the registers seen
    assert r.respond(sub)[0] == rtu.encode_response(2, 4, [2, 3])
    out = rtu.encode_request(2, 4, 10, 2)          # never seen: illegal data address
    assert r.respond(out)[0] == rtu.encode_exception(2, 4, 2)
    wr = rtu.encode_request(2, 6, 7, 1, 99)        # a write: acknowledged and remembered
    assert r.respond(wr)[0] == wr
    assert r.respond(rtu.encode_request(2, 3, 7, 1))[0] == rtu.encode_response(2, 3, [99])
    assert r.respond(rtu.encode_request(5, 4, 0, 4)) == (None, None)   # not on this bus
    assert r.stats["exact"] == 3 and r.stats["composed"] == 2 and r.stats["unknown"] == 1


def test_transport_round_trip_is_taken_off(bus):
    recs = _records()[0]
    char = rtu.char_us(9600)
    r = replayer.Replayer(recs, 9600, transport_us=300)
    assert r._lead(8) == 8 * char - 300              # arrival: written at its end, less the trip
    r.timing = "wire"
    assert r._lead(8) == -300
    # a pty's round trip is measured at open: positive, and far below a character at 9600
    r.open(bus.paths[1], "auto")
    assert r.timing == "arrival" and 0 < r.transport_us < 5 * char
    r.stop()
    assert replayer._is_pty(bus.paths[1]) and not replayer._is_pty("/dev/null")
    r.open("loop://", "auto")
    assert r.transport_us == 0
    r.stop()


def test_faults_parse():
    f = replayer.Faults.from_dict({"drop": 0.5, "silent": [{"slave": 3, "t0": 1, "t1": 2}]})
    assert f.is_silent(3, 1.5) and not f.is_silent(3, 2.5) and not f.is_silent(2, 1.5)
    assert replayer.parse_silent("0x10@5-7.5") == (16, 5.0, 7.5)
    with pytest.raises(replayer.FaultError, match="corrupt_crc"):
        replayer.Faults(corrupt_crc=1.5)
    with pytest.raises(replayer.FaultError, match="silent"):
        replayer.Faults.from_dict({"silent": [{"slave": 3}]})


def test_replay_faults_on_a_pty(bus):
    recs, rq, rs1, rs2 = _records()
    port = bus.paths[1]
    with replayer.Replayer(recs, 9600, replayer.Faults(corrupt_crc=1.0)).start(port) as r:
        got = _ask(bus, rq)
        assert got is not None and not rtu.check_crc(got) and got[:-1] == rs1[:-1]
    with replayer.Replayer(recs, 9600, replayer.Faults(silent=["2@0-60"])).start(port) as r:
        assert _ask(bus, rq, timeout=0.3) is None
        assert r.stats["silenced"] == 1
    with replayer.Replayer(recs, 9600, replayer.Faults(noise_burst=1.0)).start(port) as r:
        got = _ask(bus, rq, timeout=0.5, settle=0.3)
        assert got.endswith(rs1) and len(got) > len(rs1)   # noise, silence, then the answer


def _ask(bus, req, timeout=1.0, settle=0.05):
    os.write(bus.s[0], req)
    buf = b""
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([bus.s[0]], [], [], settle if buf else end - time.time())
        if not r:
            if buf:
                break
            continue
        buf += os.read(bus.s[0], 4096)
    return buf or None


# ---- capture -> decode -> replay round trip --------------------------------------------------

def _site_values():
    """Slave 1: the Seplos BMS, slave 2: an SDM630 grid meter exporting 1.234 kW."""
    bms = regmap.load("seplos_v3")
    met = regmap.load("sdm630")
    want = {1: (bms, {"v_cv": 5325, "i_ca": -137, "soc_cpct": 8320, "soh_cpct": 9990,
                      "cycles": 10, "ccl_ca": 18000, "dcl_ca": 18000}),
            2: (met, {"p_w": -1234, "u1_dv": 2301, "f_chz": 4998, "e_imp_wh": 123456})}
    return want


def _server_context(want):
    """pymodbus SimDevices holding the encoded points (non-shared tables, one per kind)."""
    from pymodbus.simulator import DataType, SimData, SimDevice
    devs = []
    for slave, (m, vals) in want.items():
        tables = {"coil": {}, "discrete": {}, "input": {}, "holding": {}}
        for fc, addr, qty in regmap.plan(m):
            t = regmap.FC_TABLE[fc]
            for a in range(addr, addr + qty):
                tables[t][a] = 0
        for name, v in vals.items():
            t, a, words = regmap.encode_point(m, name, v)
            for i, w in enumerate(words):
                tables[t][a + i] = w
        blocks = []
        for kind in ("coil", "discrete", "holding", "input"):
            t = tables[kind]
            bits = kind in ("coil", "discrete")
            runs = []
            for a in sorted(t):
                if runs and runs[-1][0] + len(runs[-1][1]) == a:
                    runs[-1][1].append(t[a])
                else:
                    runs.append((a, [t[a]]))
            blocks.append([SimData(address=a, values=[bool(x) for x in v] if bits else v,
                                   datatype=DataType.BITS if bits else DataType.REGISTERS)
                           for a, v in runs] or [SimData(
                               address=0, values=[False] if bits else [0],
                               datatype=DataType.BITS if bits else DataType.REGISTERS)])
        devs.append(SimDevice(id=slave, simdata=tuple(blocks)))
    return devs


class PymodbusServer:
    def __init__(self, ctx, port, baud):
        from pymodbus import FramerType
        from pymodbus.server import ModbusSerialServer
        self.loop = asyncio.new_event_loop()
        self.srv = None
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)

            async def main():
                self.srv = ModbusSerialServer(ctx, framer=FramerType.RTU, port=port,
                                              baudrate=baud)
                ready.set()
                await self.srv.serve_forever()
            self.loop.run_until_complete(main())
        self.th = threading.Thread(target=run, daemon=True)
        self.th.start()
        ready.wait(5)
        time.sleep(0.3)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.srv.shutdown(), self.loop).result(5)
        self.th.join(5)


def _gateway_poll(port, want, rounds=2):
    """The gateway stand-in: pymodbus client reading each map's plan, decoded by regmap."""
    from pymodbus.client import ModbusSerialClient
    c = ModbusSerialClient(port, baudrate=9600, timeout=1, retries=0)
    assert c.connect()
    got = {}
    try:
        for _ in range(rounds):
            for slave, (m, _) in want.items():
                vals = {}
                for fc, addr, qty in regmap.plan(m):
                    fn = {1: c.read_coils, 2: c.read_discrete_inputs,
                          3: c.read_holding_registers, 4: c.read_input_registers}[fc]
                    r = fn(addr, count=qty, device_id=slave)
                    assert not r.isError(), (slave, fc, addr, r)
                    data = r.bits[:qty] if fc <= 2 else r.registers
                    vals.update(regmap.decode(m, fc, addr, [int(x) for x in data]))
                got[slave] = vals
    finally:
        c.close()
    return got


def test_capture_decode_replay_round_trip(bus, tmp_path):
    warnings.simplefilter("ignore")
    want = _site_values()
    out = tmp_path / "site.jsonl"
    gw, dev, tap = bus.paths
    # 1. capture a gateway polling the real (pymodbus) devices
    cap = subprocess.Popen([EDGEGW, "trace", "capture", "--port", tap, "--baud", "9600",
                            "--out", str(out)], stderr=subprocess.PIPE, text=True)
    _wait_for_header(out)
    srv = PymodbusServer(_server_context(want), dev, 9600)
    try:
        live = _gateway_poll(gw, want)
    finally:
        srv.close()
    time.sleep(0.1)
    cap.send_signal(signal.SIGINT)
    assert cap.wait(10) == 0
    for slave, (m, vals) in want.items():
        for k, v in vals.items():
            assert live[slave][k] == v, (slave, k)
    # 2. decode the capture: the same values, by point name
    r = subprocess.run([EDGEGW, "trace", "decode", str(out), "--map", "1=seplos_v3",
                        "--map", "2=sdm630", "--json"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    dec = {}
    for line in r.stdout.splitlines():
        e = json.loads(line)
        assert "error" not in e, e
        if e["dir"] == "rsp":
            dec.setdefault(e["slave"], {}).update(e["values"])
    assert dec == live
    # 3. replay the capture in place of the devices: the gateway decodes the same values
    rep = subprocess.Popen([EDGEGW, "replay", str(out), "--port", dev, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    try:
        again = _gateway_poll(gw, want)
    finally:
        rep.send_signal(signal.SIGINT)
        so, se = rep.communicate(timeout=10)
    assert rep.returncode == 0, se
    assert again == live
    st = json.loads(so)
    assert st["exact"] == st["requests"] > 0 and st["answered"] == st["requests"]
