# Our codec against pymodbus as an independent peer, no network: pymodbus's own RTU framer
# and PDU decoders parse the frames we build, and we parse the frames pymodbus builds, for
# FC 1, 2, 3, 4, 5, 6, 15, 16 and exception responses. Frames built by both sides for the
# same content must also be byte-identical.
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dual"))
from _helpers import Rand  # noqa: E402

from protocols import modbus_rtu as m  # noqa: E402

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
