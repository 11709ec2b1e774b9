# Our codec against pymodbus as an independent peer, no network: pymodbus's own RTU framer
# and PDU decoders parse the frames we build, and we parse the frames pymodbus builds, for
# FC 1, 2, 3, 4, 5, 6, 15, 16 and exception responses. Frames built by both sides for the
# same content must also be byte-identical.
import os
import sys

import pytest

from protocols import modbus_rtu as m  # noqa: E402


def _dual_helpers():
    # the dual tests' deterministic xorshift32, loaded by path under its own name: the
    # host tests' conftest (not tests/dual's) must stay the one on sys.path
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dual",
                        "_helpers.py")
    spec = importlib.util.spec_from_file_location("edgegw_dual_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


Rand = _dual_helpers().Rand

pymodbus = pytest.importorskip("pymodbus")
from pymodbus.framer import FramerRTU  # noqa: E402
from pymodbus.pdu import DecodePDU, ExceptionResponse  # noqa: E402
from pymodbus.pdu import bit_message as bm  # noqa: E402
from pymodbus.pdu import register_message as rm  # noqa: E402

REQ = {1: bm.ReadCoilsRequest, 2: bm.ReadDiscreteInputsRequest, 3: rm.ReadHoldingRegistersRequest,
       4: rm.ReadInputRegistersRequest, 5: bm.WriteSingleCoilRequest, 6: rm.WriteSingleRegisterRequest,
       15: bm.WriteMultipleCoilsRequest, 16: rm.WriteMultipleRegistersRequest}
RSP = {1: bm.ReadCoilsResponse, 2: bm.ReadDiscreteInputsResponse, 3: rm.ReadHoldingRegistersResponse,
       4: rm.ReadInputRegistersResponse, 5: bm.WriteSingleCoilResponse, 6: rm.WriteSingleRegisterResponse,
       15: bm.WriteMultipleCoilsResponse, 16: rm.WriteMultipleRegistersResponse}
N = 150  # random cases per function code and direction


def server():  # decodes requests
    return FramerRTU(DecodePDU(True))


def client():  # decodes responses
    return FramerRTU(DecodePDU(False))


def peer_parse(framer, frame):
    used, pdu = framer.handleFrame(frame, 0, 0)
    assert used == len(frame) and pdu is not None, frame.hex()
    return pdu


def cases(fc, rnd):
    """(slave, addr, qty, values) with edge cases first, then random ones."""
    lim = {1: 2000, 2: 2000, 3: 125, 4: 125, 5: 1, 6: 1, 15: m.MAX_WRITE_BITS, 16: 123}[fc]
    out = [(1, 0, 1), (247, 0x10000 - lim, lim), (17, 0xFFFF, 1), (255, 0, lim)]
    for _ in range(N):
        q = 1 + rnd.below(lim)
        out.append((1 + rnd.below(247), rnd.below(0x10000 - q + 1), q))
    for s, a, q in out:
        if fc in (1, 2, 15, 5):
            vals = [rnd.below(2) for _ in range(q)]
        else:
            vals = [rnd.next() & 0xFFFF for _ in range(q)]
        yield s, a, q, vals


@pytest.mark.parametrize("fc", [1, 2, 3, 4, 5, 6, 15, 16])
def test_our_requests_decode_in_pymodbus_and_back(fc):
    rnd = Rand(1000 + fc)
    srv = server()
    for s, a, q, vals in cases(fc, rnd):
        if fc in (5, 6):
            ours = m.encode_request(s, fc, a, values=vals[0])
        elif fc in (15, 16):
            ours = m.encode_request(s, fc, a, values=vals)
        else:
            ours = m.encode_request(s, fc, a, q)
        pdu = peer_parse(srv, ours)
        assert isinstance(pdu, REQ[fc]) and pdu.dev_id == s and pdu.address == a
        if fc in (1, 2, 3, 4):
            assert pdu.count == q
        elif fc == 5:
            assert pdu.bits[0] == bool(vals[0])
        elif fc == 6:
            assert pdu.registers == [vals[0]]
        elif fc == 15:
            assert pdu.count == q and [int(b) for b in pdu.bits[:q]] == vals
        else:
            assert pdu.count == q and pdu.registers == vals
        # the same request built by pymodbus is byte-identical and decodes in ours
        kw = {"dev_id": s, "address": a}
        if fc in (1, 2, 3, 4):
            kw["count"] = q
        elif fc in (5, 15):
            kw["bits"] = [bool(b) for b in vals]
        else:
            kw["registers"] = vals
        theirs = srv.buildFrame(REQ[fc](**kw))
        assert theirs == ours, (fc, theirs.hex(), ours.hex())
        r = m.decode_request(theirs)
        assert (r.slave, r.fc, r.addr) == (s, fc, a)
        if fc in (15, 16):
            assert r.values == vals and r.qty == q
        elif fc in (5, 6):
            assert r.values == [vals[0]]
        else:
            assert r.qty == q


@pytest.mark.parametrize("fc", [1, 2, 3, 4, 5, 6, 15, 16])
def test_our_responses_decode_in_pymodbus_and_back(fc):
    rnd = Rand(2000 + fc)
    cli = client()
    for s, a, q, vals in cases(fc, rnd):
        if fc in (1, 2, 3, 4):
            ours = m.encode_response(s, fc, vals)
        elif fc in (5, 6):
            ours = m.encode_response(s, fc, addr=a, qty=vals[0])
        else:
            ours = m.encode_response(s, fc, addr=a, qty=q)
        pdu = peer_parse(cli, ours)
        assert isinstance(pdu, RSP[fc]) and pdu.dev_id == s
        if fc in (1, 2):
            assert [int(b) for b in pdu.bits[:q]] == vals and not any(pdu.bits[q:])
        elif fc in (3, 4):
            assert pdu.registers == vals
        elif fc == 5:
            assert pdu.address == a and pdu.bits[0] == bool(vals[0])
        elif fc == 6:
            assert pdu.address == a and pdu.registers == [vals[0]]
        else:
            assert pdu.address == a and pdu.count == q
        kw = {"dev_id": s}
        if fc in (1, 2):
            kw["bits"] = [bool(b) for b in vals]
        elif fc in (3, 4):
            kw["registers"] = vals
        elif fc == 5:
            kw.update(address=a, bits=[bool(vals[0])])
        elif fc == 6:
            kw.update(address=a, registers=[vals[0]])
        else:
            kw.update(address=a, count=q)
        theirs = cli.buildFrame(RSP[fc](**kw))
        assert theirs == ours, (fc, theirs.hex(), ours.hex())
        req = m.Request(s, fc, a, q, None if fc not in (5, 6) else [vals[0]])
        r = m.decode_response(theirs, req)
        if fc in (1, 2, 3, 4):
            assert r.values == vals
        elif fc in (5, 6):
            assert r.addr == a and r.values == [vals[0]]
        else:
            assert r.addr == a and r.qty == q


def test_exception_responses_both_ways():
    cli = client()
    for fc in (1, 2, 3, 4, 5, 6, 15, 16):
        for code in (1, 2, 3, 4, 6, 11):
            for s in (0, 1, 247):
                ours = m.encode_exception(s, fc, code)
                pdu = peer_parse(cli, ours)
                assert isinstance(pdu, ExceptionResponse)
                assert pdu.dev_id == s and pdu.function_code == fc | 0x80 and pdu.exception_code == code
                theirs = cli.buildFrame(ExceptionResponse(fc, code, device_id=s))
                assert theirs == ours
                r = m.decode_response(theirs, m.Request(s, fc, 0, 1, [0]))
                assert r.exc == code and r.fc == fc and r.slave == s


def test_reference_frames_agree():
    # frames quoted in ../shared/reference/README.md and the Seplos capture
    for h, is_req in (("fe0400030001d5c5", True), ("1103007c00020743", True),
                      ("110304008d008efbbd", False), ("0083029131", False), ("0084029301", False)):
        f = bytes.fromhex(h)
        pdu = peer_parse(server() if is_req else client(), f)
        if is_req:
            r = m.decode_request(f)
            assert (pdu.dev_id, pdu.address, pdu.count) == (r.slave, r.addr, r.qty)
        else:
            r = m.decode_response(f)
            assert pdu.dev_id == r.slave
            assert (pdu.exception_code if r.exc else pdu.registers) == (r.exc or r.values)


def test_crc_agrees_with_pymodbus():
    rnd = Rand(5)
    for n in range(1, 300, 7):
        body = rnd.bytes(n)
        c = m.crc16(body)
        assert FramerRTU.compute_CRC(body) == ((c & 0xFF) << 8) | (c >> 8)


# ---- a real pymodbus serial server on a pty, driven with our codec and the register maps ----

SERVER = r"""
import asyncio, json, sys
from pymodbus.server import StartAsyncSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice
devs = []
for slave, img in json.loads(sys.argv[2]).items():
    # one SimData per contiguous run of addresses; addresses not defined answer exception 02,
    # like a device with gaps in its map. Separate blocks: one coil per address.
    blocks = []
    for key, dt in (("co", DataType.BITS), ("di", DataType.BITS),
                    ("hr", DataType.REGISTERS), ("ir", DataType.REGISTERS)):
        d = {int(a): v for a, v in img.get(key, {}).items()} or {65534: 0}  # no empty blocks
        runs = []
        for a in sorted(d):
            if runs and runs[-1][0] + len(runs[-1][1]) == a:
                runs[-1][1].append(d[a])
            else:
                runs.append((a, [d[a]]))
        if dt == DataType.BITS:
            blocks.append([SimData(a, values=[bool(x) for x in v], datatype=dt) for a, v in runs])
        else:
            blocks.append([SimData(a, values=v, datatype=dt) for a, v in runs])
    devs.append(SimDevice(int(slave), simdata=tuple(blocks)))
asyncio.run(StartAsyncSerialServer(context=devs, port=sys.argv[1], baudrate=115200))
"""

TABLE_KEY = {"coil": "co", "discrete": "di", "input": "ir", "holding": "hr"}
VALUES = {
    "sunspec_pcs": {"p_w": -4321, "u1_dv": 2301, "f_chz": 4998, "state": 4, "fault": 0, "p_rated_w": 100000,
                    "soc_cpct": 5000, "run": 1, "p_set_w": -4000, "rvrt_s": 60},
    "sungrow_sh": {"p_w": -3000, "state": 0x40, "soc_cpct": 8320, "soh_cpct": 9990, "run": 1, "ems_mode": 0,
                   "p_set_w": 0, "soc_max_cpct": 9500, "soc_min_cpct": 1000, "export_lim_w": 0},
    "seplos_v3": {"v_cv": 5325, "i_ca": -137, "soc_cpct": 8320, "soh_cpct": 9990, "cycles": 10,
                  "cell_max_mv": 3328, "cell_min_mv": 3327, "t_max_cdc": 2135, "t_min_cdc": 2105,
                  "ccl_ca": 18000, "dcl_ca": 18000, "alarm": 0b101, "protect": 1 << 27},
    "sdm630": {"p_w": -1500, "u1_dv": 2305, "i1_ma": 6520, "f_chz": 5001, "pf_milli": -950,
               "e_imp_wh": 1234567, "e_exp_wh": 7654321},
}
SLAVES = {"sunspec_pcs": 1, "sungrow_sh": 2, "seplos_v3": 3, "sdm630": 4}


@pytest.fixture(scope="module")
def pty_server():
    import json
    import pty
    import subprocess
    import tty

    from protocols import regmap
    maps = {n: regmap.load(n) for n in SLAVES}
    images = {}
    for name, mp in maps.items():
        img = images.setdefault(str(SLAVES[name]), {})
        fc_key = {1: "co", 2: "di", 3: "hr", 4: "ir"}
        for fc, a, q in regmap.plan(mp):  # the device has the registers the plan reads ...
            tab = img.setdefault(fc_key[fc], {})
            for i in range(q):
                tab[str(a + i)] = 0
        for pn, v in VALUES[name].items():  # ... and the test values are encoded in
            tab = img[TABLE_KEY[mp.points[pn]["table"]]]
            cur = {int(k): x for k, x in tab.items()}
            t, a, regs = regmap.encode_point(mp, pn, v, cur)
            for i, w in enumerate(regs):
                tab[str(a + i)] = w
    master, slave = pty.openpty()
    tty.setraw(master)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, os.ttyname(slave), json.dumps(images)],
                            stderr=subprocess.PIPE)
    frame = m.encode_request(1, 3, 40000, 1)
    for _ in range(50):  # the server process needs a moment to start
        if proc.poll() is not None:
            pytest.fail("pymodbus server exited: %s" % proc.stderr.read().decode()[-2000:])
        if transact(master, frame, m.decode_request(frame), 0.2) is not None:
            break
    else:
        pytest.fail("pymodbus server did not answer")
    yield master, maps
    proc.terminate()
    proc.wait(5)
    os.close(master)
    os.close(slave)


def transact(fd, frame, req, timeout=1.0):
    import select
    import time
    os.write(fd, frame)
    buf = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            buf += os.read(fd, 512)
            n = m.response_len(buf)
            if n and len(buf) >= n:
                return m.decode_response(buf[:n], req)
    return None


def ask(fd, slave, fc, addr, qty=1, values=None):
    frame = m.encode_request(slave, fc, addr, qty, values)
    r = transact(fd, frame, m.decode_request(frame))
    assert r is not None, "no answer from pymodbus to %s" % frame.hex()
    return r


@pytest.mark.parametrize("name", sorted(SLAVES))
def test_maps_against_a_pymodbus_server(pty_server, name):
    from protocols import regmap
    fd, maps = pty_server
    mp = maps[name]
    got = {}
    for fc, a, q in regmap.plan(mp):
        r = ask(fd, SLAVES[name], fc, a, q)
        assert not r.exc, (name, fc, a, q, r)  # the plan never reads an address the peer lacks
        got.update(regmap.decode(mp, fc, a, r.values))
    for pn, v in VALUES[name].items():
        assert got[pn] == v, (name, pn, got[pn], v)
    # writes go through the peer's datastore and read back
    for pn in sorted(mp.points):
        p = mp.points[pn]
        if p["access"] == "r":
            continue
        v = p["min"] if "min" in p else p["values"][-1][0]
        for fc, a, vals in regmap.encode_write(mp, pn, v):
            r = ask(fd, SLAVES[name], fc, a, len(vals), vals if fc in (15, 16) else vals[0])
            assert not r.exc and r.addr == a, (pn, r)
        p_read = [x for x in regmap.plan(mp, [pn])]
        back = {}
        for fc, a, q in p_read:
            back.update(regmap.decode(mp, fc, a, ask(fd, SLAVES[name], fc, a, q).values))
        assert back[pn] == v, (name, pn, back, v)


def test_gap_is_refused_by_the_peer(pty_server):
    # reading across Sungrow's undocumented holding range draws exception 02: what the
    # map's gaps keep the planner from doing
    fd, maps = pty_server
    r = ask(fd, 2, 3, 12999, 60)
    assert r.exc == 2
