# Trace format: runs under CPython (pytest) and MicroPython (tools/mpytest.py).
import binascii
import io

from protocols import modbus_rtu as rtu
from protocols import trace
from _helpers import raises

CAPTURE = """
# two real exchanges from a Seplos V3 capture, one exception, one bad request
>>> 01.04.10.00.00.11.34.C6
<<< 01.04.22.14.CD.FF.77.6B.40.80.E8.01.22.03.40.03.E7.00.0A.0C.FF.0B.7F.0D.00.0C.FF.0B.81.0B.7E.00.00.00.B4.00.B4.D3.2E
>>> 00.04.21.00.00.1A.7A.2C
<<< 00.84.02.93.01
>>> 01.01.12.00.09.00.3F.22
<<< 01.81.02.C1.91
""".split("\n")


def test_writer_lines_and_read_back():
    f = io.StringIO()
    w = trace.Writer(f, {"baud": 9600, "source": "test", "site": "lab"})
    req = rtu.encode_request(1, 3, 0, 2)
    w.frame(1000, "bms", "req", req, 0)
    w.frame(25000, "bms", "rsp", b"\x01\x03\x04\x00\x01\x00\x02\x00\x00", rtu.F_GAP | rtu.F_CRC)
    w.frame(26000, "bms", "junk", b"\x00", ["short", "crc"])
    lines = f.getvalue().split("\n")
    assert lines[1] == ('{"t_us": 1000, "bus": "bms", "dir": "req", "hex": "%s", "flags": []}'
                        % binascii.hexlify(req).decode())
    assert '"flags": ["crc", "gap"]' in lines[2]
    h, recs = trace.read(io.StringIO(f.getvalue()))
    assert h["trace"] == 1 and h["baud"] == 9600 and h["site"] == "lab"
    recs = list(recs)
    assert [r["dir"] for r in recs] == ["req", "rsp", "junk"]
    assert trace.data(recs[0]) == req and recs[1]["flags"] == ["crc", "gap"]
    assert recs[2]["t_us"] == 26000
    # records written back give the same text
    g = io.StringIO()
    w2 = trace.Writer(g, h)
    for r in recs:
        w2.write(r)
    assert g.getvalue().split("\n")[1:] == lines[1:]


def test_read_errors_name_the_line():
    raises(trace.TraceError, trace.read, io.StringIO('{"t_us": 1}\n'))
    h, it = trace.read(io.StringIO('{"trace": 1, "baud": 9600, "source": "x"}\n\n{"t_us": "a"}\n'))
    e = raises(trace.TraceError, list, it)
    assert "line 3" in str(e) and "t_us" in str(e)
    for bad, word in (('{"t_us": 1, "bus": "b", "dir": "up", "hex": "", "flags": []}', "dir"),
                      ('{"t_us": 1, "bus": "b", "dir": "req", "hex": "0g", "flags": []}', "hex"),
                      ('{"t_us": 1, "bus": "b", "dir": "req", "hex": "abc", "flags": []}', "hex"),
                      ("nope", "JSON")):
        h, it = trace.read(io.StringIO('{"trace": 1, "baud": 9600, "source": "x"}\n' + bad + "\n"))
        e = raises(trace.TraceError, list, it)
        assert word in str(e) and "line 2" in str(e), str(e)
    raises(trace.TraceError, trace.Writer, io.StringIO(), {"source": "x"})


def test_import_dotted_and_pair():
    recs = trace.import_dotted(CAPTURE, bus="bms", baud=19200)
    assert len(recs) == 6
    assert [r["dir"] for r in recs] == ["req", "rsp"] * 3
    assert all(r["flags"] == [] for r in recs)  # every frame's CRC is right
    ts = [r["t_us"] for r in recs]
    assert ts == sorted(ts) and ts[0] == 8 * rtu.char_us(19200)
    tx = list(trace.transactions(recs))
    assert len(tx) == 3
    req, rsp, a, b, err = tx[0]
    assert err is None and req.fc == 4 and req.addr == 0x1000 and rsp.values[0] == 5325
    req, rsp, a, b, err = tx[1]
    assert err is None and rsp.exc == 2 and rsp.fc == 4
    req, rsp, a, b, err = tx[2]  # 0x0900 coils > 2000: the master's mistake, refused
    assert req is None and err.startswith("request:") and rsp.exc == 2 and rsp.fc == 1


def test_import_dotted_errors_and_bad_crc():
    e = raises(trace.TraceError, trace.import_dotted, ["", "oops 01.02"])
    assert "line 2" in str(e)
    e = raises(trace.TraceError, trace.import_dotted, [">>> 01.0G"])
    assert "line 1" in str(e)
    r = trace.import_dotted(["<<< 01.04.00.00.00.01.00.00", ">>> 01"])
    assert r[0]["flags"] == ["crc"] and r[1]["flags"] == ["crc", "short"]
    tx = list(trace.transactions(r))
    assert tx[0][4] == "response without request"
    assert tx[1][4] == "request: frame too short: 1 bytes, need 8"


def test_reader_bounds_t_us_and_flags():
    # issue 14.4: a 400-digit t_us or a number in flags went through to a traceback
    head = '{"trace": 1, "baud": 9600, "source": "x"}\n'
    rec = '{"t_us": %s, "bus": "b", "dir": "req", "hex": "01041000001134c6", "flags": %s}\n'
    for t, fl, what in (("9" * 400, "[]", "t_us"), ("-1", "[]", "t_us"), ("1.5", "[]", "t_us"),
                        ("5", "[1]", "flags"), ("5", '["crc", null]', "flags"),
                        ("5", '"crc"', "flags")):
        h, recs = trace.read(io.StringIO(head + rec % ("1", "[]") + rec % (t, fl)))
        e = raises(trace.TraceError, list, recs)
        assert "line 3" in str(e) and what in str(e), str(e)
    h, recs = trace.read(io.StringIO(head + rec % (str(trace.T_MAX), '["crc", "new"]')))
    assert list(recs)[0]["flags"] == ["crc", "new"]


def test_reader_garbage_lines_name_the_line():
    head = '{"trace": 1, "baud": 9600, "source": "x"}\n'
    for bad in ("[" * 5000, "{", "nul", '{"t_us": 1}', "[1, 2]"):
        h, recs = trace.read(io.StringIO(head + bad + "\n"))
        e = raises(trace.TraceError, list, recs)
        assert "line 2" in str(e), str(e)
    raises(trace.TraceError, trace.read, io.StringIO("[" * 5000 + "\n"))


PIA_RSP = ("01 04 22 14 CD FF 77 6B 40 80 E8 01 22 03 40 03 E7 00 0A 0C FF 0B 7F 0D 00 0C FF 0B 81"
           " 0B 7E 00 00 00 B4 00 B4 D3 2E")
PIB_RSP = ("01 04 34 0C FF 0C FF 0D 00 0D 00 0D 00 0C FF 0D 00 0C FF 0D 00 0D 00 0D 00 0D 00 0D 00"
           " 0C FF 0C FF 0D 00 0B 82 0B 7F 0B 81 0B 7E 0A AB 0A AB 0A AB 0A AB 0B 8C 0B 7F 01 13")
SEPLOS_READS = [(1, 4, 0x1000, 17), (1, 4, 0x1100, 26), (1, 1, 0x1200, 144)]


def _ox(hexbytes):
    return " ".join("0x" + b for b in hexbytes.split())


def test_import_0x_responses_only_paired_by_shape():
    # a sniffer that logs responses only, several frames a line (the SP05B captures)
    lines = ["# responses only", _ox(PIA_RSP) + " " + _ox(PIB_RSP), _ox("01 81 02 C1 91"),
             _ox(PIA_RSP)]
    assert trace.detect(lines) == "0x"
    recs = trace.import_hex(lines, "0x", bus="bms", reads=SEPLOS_READS)
    assert [r["dir"] for r in recs] == ["req", "rsp", "req", "rsp", "rsp", "req", "rsp"]
    assert recs[0]["flags"] == ["synth"] and recs[1]["flags"] == []
    assert recs[0]["hex"] == "01041000001134c6"   # the very request in the real capture
    assert recs[2]["hex"] == "01041100001a74fd"
    tx = list(trace.transactions(recs))
    assert [t[4] for t in tx] == [None, None, "response without request", None]
    assert tx[1][1].values[:2] == [0x0CFF, 0x0CFF] and tx[1][0].addr == 0x1100
    ts = [r["t_us"] for r in recs]
    assert ts == sorted(ts) and ts[0] > 0
    # without reads nothing is invented
    recs = trace.import_hex(lines, "0x", reads=())
    assert [r["dir"] for r in recs] == ["rsp"] * 4


def test_import_0x_ambiguous_shape_not_paired():
    reads = [(1, 4, 0x1000, 17), (1, 3, 0, 4), (1, 4, 0x3000, 17)]
    recs = trace.import_hex([_ox(PIA_RSP)], "0x", reads=reads)
    assert [r["dir"] for r in recs] == ["rsp"]
    assert trace.shapes(reads) == {(1, 3, 8): (0, 4)}


def test_import_plain_hex_dump():
    req = "01 04 10 00 00 11 34 C6"
    lines = ["00000000: " + req + "  |..4.|", PIA_RSP.replace(" ", ""), "", "0081029051"]
    assert trace.detect(lines) == "hex"
    recs = trace.import_hex(lines, "hex")
    assert [r["dir"] for r in recs] == ["req", "rsp", "rsp"]
    tx = list(trace.transactions(recs))
    assert tx[0][1].values[0] == 0x14CD and tx[0][4] is None
    assert tx[1][1].exc == 2
    e = raises(trace.TraceError, trace.import_hex, ["01 04 zz"], "hex")
    assert "line 1" in str(e)
    e = raises(trace.TraceError, trace.import_hex, ["", "0x01 0x4 0x100"], "0x")
    assert "line 2" in str(e)
    raises(trace.TraceError, trace.import_hex, ["# nothing"], "hex")


def test_detect_formats():
    assert trace.detect(['{"trace": 1}']) == "jsonl"
    assert trace.detect(["", "# c", ">>> 01.04"]) == "dotted"
    assert trace.detect(["0x01, 0x04"]) == "0x"
    assert trace.detect(["hello world"]) is None
    assert trace.detect([]) is None


def test_header_baud_must_be_a_positive_int():
    for b in ("0", "-9600", "true", '"9600"', "1e999", "9" * 40):
        e = raises(trace.TraceError, trace.read,
                   io.StringIO('{"trace": 1, "baud": %s, "source": "x"}\n' % b))
        assert "line 1" in str(e) and "baud" in str(e), str(e)
    assert trace.read(io.StringIO('{"trace": 1, "baud": 19200, "source": "x"}\n'))[0]["baud"] \
        == 19200
