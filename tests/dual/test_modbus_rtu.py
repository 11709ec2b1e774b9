# Runs under CPython (pytest) and MicroPython (tools/mpytest.py).
from protocols import modbus_rtu as m
from _helpers import raises, Rand, cpython_only

UNHEX = bytes.fromhex


def test_crc_reference_vector():
    # the reference quotes the wire order E2 DB (low byte first)
    assert m.crc16_py(UNHEX("1234234534564567")) == 0xDBE2
    assert m.crc16(UNHEX("1234234534564567")) == 0xDBE2
    assert m.add_crc(UNHEX("1234234534564567"))[-2:] == UNHEX("e2db")


def test_reference_frames_valid():
    for h in ("fe0400030001d5c5", "1103007c00020743", "110304008d008efbbd", "0083029131"):
        assert m.check_crc(UNHEX(h)), h


def test_encode_read_request_matches_reference():
    assert m.encode_request(0xFE, 4, 3, 1) == UNHEX("fe0400030001d5c5")
    assert m.encode_request(0x11, 3, 0x7C, 2) == UNHEX("1103007c00020743")


def test_decode_reference_response():
    req = m.Request(0x11, 3, 0x7C, 2)
    r = m.decode_response(UNHEX("110304008d008efbbd"), req)
    assert r.values == [0x8D, 0x8E] and r.addr == 0x7C and r.qty == 2


def test_exception_response():
    r = m.decode_response(UNHEX("0083029131"))
    assert r.exc == 2 and r.fc == 3
    assert m.encode_exception(0, 3, 2) == UNHEX("0083029131")


def test_roundtrip_all_functions():
    cases = [  # (fc, addr, slave, qty, values)
        (1, 0x13, 0x25, 19, None),
        (2, 0xC4, 17, 22, None),
        (3, 0x6B, 17, 125, None),
        (4, 0xFF00, 8, 1, None),
        (5, 0xAC, 17, 1, [1]),
        (6, 0x01, 17, 1, [0x0003]),
        (15, 0x13, 17, 10, [1, 0, 1, 1, 0, 0, 1, 1, 1, 0]),
        (16, 0x01, 247, 2, [0x000A, 0x0102]),
    ]
    for fc, addr, slave, qty, values in cases:
        f = m.encode_request(slave, fc, addr, qty, values)
        rq = m.decode_request(f)
        assert (rq.slave, rq.fc, rq.addr, rq.qty) == (slave, fc, addr, qty), (fc, rq)
        if values is not None:
            assert rq.values == values
        if fc <= 2:
            rsp = m.encode_response(slave, fc, [i & 1 for i in range(qty)])
            r = m.decode_response(rsp, rq)
            assert r.values == [i & 1 for i in range(qty)]
        elif fc <= 4:
            vals = [(i * 257) & 0xFFFF for i in range(qty)]
            r = m.decode_response(m.encode_response(slave, fc, vals), rq)
            assert r.values == vals
        elif fc in (5, 6):
            r = m.decode_response(m.encode_response(slave, fc, addr=addr, qty=values[0]), rq)
            assert r.values == values
        else:
            r = m.decode_response(m.encode_response(slave, fc, addr=addr, qty=qty), rq)
            assert r.qty == qty
        assert len(m.encode_response(slave, fc, [1] * qty, addr, qty)) == rq.response_len() or fc in (5, 6)


def test_validation_names_the_problem():
    e = raises(m.ModbusError, m.encode_request, 1, 3, 0, 126)
    assert "quantity" in str(e) and "125" in str(e)
    e = raises(m.ModbusError, m.encode_request, 1, 16, 0, 0, [0] * 124)
    assert "123" in str(e)
    e = raises(m.ModbusError, m.encode_request, 1, 1, 0, 2001)
    assert "2000" in str(e)
    e = raises(m.ModbusError, m.encode_request, 1, 3, 0xFFF0, 32)
    assert "overflow" in str(e)
    e = raises(m.ModbusError, m.encode_request, 1, 7, 0, 1)
    assert "function" in str(e)
    e = raises(m.ModbusError, m.encode_request, 300, 3, 0, 1)
    assert "slave" in str(e)
    e = raises(m.ModbusError, m.encode_request, 1, 6, 0, 1, [70000])
    assert "value" in str(e)


def test_decode_rejects_bad_byte_count():
    bad = m.add_crc(UNHEX("110305008d008e"))  # says 5 bytes, carries 4
    e = raises(m.ModbusError, m.decode_response, bad)
    assert "byte count" in str(e)
    e = raises(m.CRCError, m.decode_response, UNHEX("110304008d008efbbe"))
    assert "CRC" in str(e)


def test_garbage_raises_only_codec_errors():
    rnd = Rand(7)
    for i in range(3000):
        n = rnd.below(40)
        junk = rnd.bytes(n)
        if i & 1 and n > 3:
            junk = m.add_crc(junk[:-2])  # valid CRC, nonsense content
        for fn in (m.decode_request, m.decode_response):
            try:
                fn(junk)
            except m.ModbusError:
                pass
        try:
            m.request_len(junk)
            m.response_len(junk)
        except m.ModbusError:
            pass


def test_framer_by_silence():
    f = m.Framer(9600)
    req = m.encode_request(1, 3, 0, 2)
    rsp = m.encode_response(1, 3, [1, 2])
    t = 0
    out = []
    for b in req:
        t += f.char
        out += f.feed(bytes((b,)), t)
    assert out == []
    t += 5000  # > t3.5 (4011 us at 9600)
    out += f.poll(t)
    assert out == [(req, m.F_GAP)]
    out = []
    for b in rsp:
        t += f.char
        out += f.feed(bytes((b,)), t)
    t += 500
    assert f.poll(t) == []
    assert f.poll(t + 4000) == [(rsp, m.F_GAP)]


def test_framer_gap_splits_back_to_back_chunks():
    f = m.Framer(9600)
    a = m.encode_request(1, 3, 0, 2)
    b = m.encode_request(2, 4, 0, 2)
    out = f.feed(a, 1000 + len(a) * f.char)
    out += f.feed(b, 1000 + len(a) * f.char + 5000 + len(b) * f.char)
    out += f.flush()
    assert out == [(a, m.F_GAP), (b, m.F_GAP)]


def test_framer_by_predicted_length():
    f = m.Framer(9600)
    rsp = m.encode_response(1, 4, [10, 20, 30])
    f.expect(m.response_len_for(4, 3))
    out = f.feed(rsp[:4], 100)
    assert out == []
    out = f.feed(rsp[4:], 200)
    assert out == [(rsp, m.F_LEN)]
    # an exception arrives instead of the long response
    f.expect(m.response_len_for(3, 10))
    exc = m.encode_exception(1, 3, 2)
    assert f.feed(exc, 300) == [(exc, m.F_LEN)]


def test_framer_marks_crc_error_and_noise():
    f = m.Framer(19200)
    assert f.t35 == 2006
    assert m.Framer(38400).t35 == 1750
    bad = bytearray(m.encode_response(1, 3, [1, 2]))
    bad[3] ^= 0x10
    f.feed(bytes(bad), 1000)
    out = f.poll(10000)
    assert out[0][1] & m.F_CRC
    f.feed(b"\x00\x01", 20000)
    out = f.poll(30000)
    assert out[0][1] & m.F_SHORT


def test_split_stream_resyncs_after_garbage():
    a = m.encode_request(1, 3, 0, 2)
    b = m.encode_response(1, 3, [5, 6])
    c = m.encode_request(1, 4, 10, 1)
    d = m.encode_exception(1, 4, 2)
    stream = a + b + b"\xff\x00" + c + d
    kinds = [(k, fr) for fr, k in m.split_stream(stream)]
    good = [x for x in kinds if x[0] != "junk"]
    assert good == [("req", a), ("rsp", b), ("req", c), ("rsp", d)], kinds


def test_crc_fuzz_against_python_table():
    # 10,000 random frames: the table-driven CRC equals the bitwise definition.
    rnd = Rand(99)
    for _ in range(10000):
        data = rnd.bytes(1 + rnd.below(30))
        c = 0xFFFF
        for b in data:
            c ^= b
            for _k in range(8):
                c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        assert m.crc16_py(data) == c
        assert m.crc16(data) == c


def test_exception_code_zero_is_a_protocol_error():
    # issue 14.1: "01 84 00 CRC" decoded as a normal response with no values
    f = m.add_crc(bytes((1, 0x84, 0)))
    e = raises(m.ModbusError, m.decode_response, f)
    assert "code 0" in str(e)
    q = m.decode_request(b"\x01\x04\x10\x00\x00\x11\x34\xc6")
    raises(m.ModbusError, m.decode_response, f, q)
    assert m.decode_response(m.add_crc(bytes((1, 0x84, 2))), q).exc == 2


def test_single_writes_need_exactly_one_value():
    # issue 14.4: values=[] raised IndexError
    for fc in (5, 6):
        raises(m.ModbusError, m.encode_request, 1, fc, 0, values=[])
        raises(m.ModbusError, m.encode_request, 1, fc, 0, values=[1, 2])
        raises(m.ModbusError, m.encode_request, 1, fc, 0, values="x")
    assert m.encode_request(1, 6, 0, values=[7]) == m.encode_request(1, 6, 0, 7)
    for fc in (15, 16):
        raises(m.ModbusError, m.encode_request, 1, fc, 0, values=5)
        raises(m.ModbusError, m.encode_request, 1, fc, 0, values=[])
