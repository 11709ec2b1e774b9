# Modbus RTU codec shared by the gateway firmware (MicroPython) and the host (CPython).
# Source: Modbus Application Protocol v1.1b3 and Modbus over Serial Line v1.02.
# Every malformed input raises ModbusError (or a subclass), never anything else.

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

import struct

READ_COILS = const(1)
READ_DISCRETE = const(2)
READ_HOLDING = const(3)
READ_INPUT = const(4)
WRITE_COIL = const(5)
WRITE_REGISTER = const(6)
WRITE_COILS = const(15)
WRITE_REGISTERS = const(16)

MAX_READ_REGS = const(125)
MAX_WRITE_REGS = const(123)
MAX_READ_BITS = const(2000)
MAX_WRITE_BITS = const(1968)  # 0x7B0: 246 data bytes fit in one 256-byte ADU

EXC_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusError(ValueError):
    """Any malformed frame or out-of-range request; the message names the problem."""


class CRCError(ModbusError):
    pass


def _make_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            if c & 1:
                c = (c >> 1) ^ 0xA001
            else:
                c >>= 1
        t.append(c)
    return tuple(t)


_TABLE = _make_table()
_unpack_from = struct.unpack_from


def crc16_py(data, crc=0xFFFF):
    """Table-driven CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF)."""
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc


crc16 = crc16_py
try:  # CPython speed-up for bulk trace decoding; same results (tests compare both)
    import crcmod.predefined as _crcmod

    _fast = _crcmod.mkPredefinedCrcFun("modbus")
    if _fast(b"\x12\x34\x23\x45\x34\x56\x45\x67") == 0xDBE2:

        def crc16(data, crc=0xFFFF):
            if crc == 0xFFFF:
                return _fast(data if type(data) is bytes else bytes(data))
            return crc16_py(data, crc)
except ImportError:
    pass


def add_crc(body):
    c = crc16(body)
    return bytes(body) + bytes((c & 0xFF, c >> 8))


def check_crc(frame):
    # the CRC of a frame including its own (little-endian) CRC is 0: no slice needed
    return len(frame) >= 4 and crc16(frame) == 0


def _u16(v, what):
    if not isinstance(v, int) or v < 0 or v > 0xFFFF:
        raise ModbusError("%s %r out of range 0..65535" % (what, v))
    return v


def _slave(s):
    # 1..247 are unicast addresses; 248..255 are reserved but used by some devices (0xFE)
    if not isinstance(s, int) or s < 0 or s > 255:
        raise ModbusError("slave id %r out of range 0..255" % (s,))
    return s


def _check_span(addr, qty, lo, hi, what):
    _u16(addr, "address")
    if not isinstance(qty, int) or qty < lo or qty > hi:
        raise ModbusError("%s quantity %r out of range %d..%d" % (what, qty, lo, hi))
    if addr + qty > 0x10000:
        raise ModbusError("address overflow: %d + %d > 65536" % (addr, qty))


def pack_bits(bits):
    out = bytearray((len(bits) + 7) >> 3)
    for i in range(len(bits)):
        if bits[i]:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data, count):
    return [(data[i >> 3] >> (i & 7)) & 1 for i in range(count)]


def _regs_bytes(values):
    out = bytearray(2 * len(values))
    i = 0
    for v in values:
        _u16(v, "register value")
        out[i] = v >> 8
        out[i + 1] = v & 0xFF
        i += 2
    return bytes(out)


def _bytes_regs(data, off, n):
    # struct does the byte pairing in C on both runtimes
    return list(_unpack_from(">%dH" % n, data, off))


class Request:
    """A decoded request. values: register values or bits for writes, else None."""

    __slots__ = ("slave", "fc", "addr", "qty", "values")

    def __init__(self, slave, fc, addr, qty, values=None):
        self.slave = slave
        self.fc = fc
        self.addr = addr
        self.qty = qty
        self.values = values

    def __repr__(self):
        return "Request(slave=%d, fc=%d, addr=%d, qty=%d, values=%r)" % (
            self.slave, self.fc, self.addr, self.qty, self.values)

    def encode(self):
        return encode_request(self.slave, self.fc, self.addr, self.qty, self.values)

    def response_len(self):
        return response_len_for(self.fc, self.qty)


class Response:
    """A decoded response. For reads: values (registers or bits, qty from the request
    when known); for writes: addr and qty/value echoed; for exceptions: exc set."""

    __slots__ = ("slave", "fc", "addr", "qty", "values", "exc")

    def __init__(self, slave, fc, addr=None, qty=None, values=None, exc=0):
        self.slave = slave
        self.fc = fc
        self.addr = addr
        self.qty = qty
        self.values = values
        self.exc = exc

    def __repr__(self):
        if self.exc:
            return "Response(slave=%d, fc=%d, exception=%d %s)" % (
                self.slave, self.fc, self.exc, EXC_NAMES.get(self.exc, "?"))
        return "Response(slave=%d, fc=%d, addr=%r, qty=%r, values=%r)" % (
            self.slave, self.fc, self.addr, self.qty, self.values)


# ---- requests ---------------------------------------------------------------

def _single(v, fc):
    # FC5/6 carry one value: a bare int or a one-element list
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise ModbusError("FC%d writes exactly one value, got %d" % (fc, len(v)))
        v = v[0]
    if not isinstance(v, int):
        raise ModbusError("FC%d value %r is not an integer" % (fc, v))
    return v


def encode_request(slave, fc, addr, qty=1, values=None):
    """Build a request ADU (with CRC). For FC5/6, values is the single value (or qty is)."""
    _slave(slave)
    if fc in (1, 2):
        _check_span(addr, qty, 1, MAX_READ_BITS, "bit read")
        body = bytes((slave, fc, addr >> 8, addr & 0xFF, qty >> 8, qty & 0xFF))
    elif fc in (3, 4):
        _check_span(addr, qty, 1, MAX_READ_REGS, "register read")
        body = bytes((slave, fc, addr >> 8, addr & 0xFF, qty >> 8, qty & 0xFF))
    elif fc == 5:
        _u16(addr, "address")
        v = _single(qty if values is None else values, 5)
        word = 0xFF00 if v else 0x0000
        body = bytes((slave, 5, addr >> 8, addr & 0xFF, word >> 8, 0))
    elif fc == 6:
        _u16(addr, "address")
        v = _single(qty if values is None else values, 6)
        _u16(v, "register value")
        body = bytes((slave, 6, addr >> 8, addr & 0xFF, v >> 8, v & 0xFF))
    elif fc == 15:
        if not isinstance(values, (list, tuple)):
            raise ModbusError("FC15 needs a list of bit values")
        qty = len(values)
        _check_span(addr, qty, 1, MAX_WRITE_BITS, "coil write")
        data = pack_bits(values)
        body = bytes((slave, 15, addr >> 8, addr & 0xFF, qty >> 8, qty & 0xFF, len(data))) + data
    elif fc == 16:
        if not isinstance(values, (list, tuple)):
            raise ModbusError("FC16 needs a list of register values")
        qty = len(values)
        _check_span(addr, qty, 1, MAX_WRITE_REGS, "register write")
        data = _regs_bytes(values)
        body = bytes((slave, 16, addr >> 8, addr & 0xFF, qty >> 8, qty & 0xFF, len(data))) + data
    else:
        raise ModbusError("unsupported function code %r" % (fc,))
    return add_crc(body)


def request_len(buf):
    """Length of the request ADU starting at buf[0], or 0 if more bytes are needed."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc <= 6 and fc >= 1:
        return 8
    if fc == 15 or fc == 16:
        if len(buf) < 7:
            return 0
        return 9 + buf[6]
    raise ModbusError("unsupported function code %d in request" % fc)


def response_len(buf):
    """Length of the response ADU starting at buf[0], or 0 if more bytes are needed."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc >= 1 and fc <= 4:
        if len(buf) < 3:
            return 0
        return 5 + buf[2]
    if fc in (5, 6, 15, 16):
        return 8
    raise ModbusError("unsupported function code %d in response" % fc)


def response_len_for(fc, qty):
    """Predicted normal response length for a request (an exception is 5)."""
    if fc == 1 or fc == 2:
        return 5 + ((qty + 7) >> 3)
    if fc == 3 or fc == 4:
        return 5 + 2 * qty
    return 8


def _frame(frame, minlen):
    n = len(frame)
    if n < minlen:
        raise ModbusError("frame too short: %d bytes, need %d" % (n, minlen))
    if n > 256:
        raise ModbusError("frame too long: %d bytes (max 256)" % n)
    if not check_crc(frame):
        raise CRCError("CRC mismatch")
    return n


def decode_request(frame):
    n = _frame(frame, 8)
    slave = frame[0]
    fc = frame[1]
    addr = (frame[2] << 8) | frame[3]
    q = (frame[4] << 8) | frame[5]
    if fc in (1, 2, 3, 4, 5, 6):
        if n != 8:
            raise ModbusError("FC%d request must be 8 bytes, got %d" % (fc, n))
        if fc in (1, 2):
            _check_span(addr, q, 1, MAX_READ_BITS, "bit read")
        elif fc in (3, 4):
            _check_span(addr, q, 1, MAX_READ_REGS, "register read")
        elif fc == 5:
            if q != 0 and q != 0xFF00:  # not `in (0, 0xFF00)`: a ROM long int when frozen
                raise ModbusError("FC5 value 0x%04X is not 0xFF00 or 0x0000" % q)
            return Request(slave, 5, addr, 1, [1 if q else 0])
        else:
            return Request(slave, 6, addr, 1, [q])
        return Request(slave, fc, addr, q)
    if fc in (15, 16):
        bc = frame[6]
        if n != 9 + bc:
            raise ModbusError("byte count %d does not match frame length %d" % (bc, n))
        if fc == 15:
            _check_span(addr, q, 1, MAX_WRITE_BITS, "coil write")
            if bc != (q + 7) >> 3:
                raise ModbusError("FC15 byte count %d wrong for %d coils" % (bc, q))
            return Request(slave, 15, addr, q, unpack_bits(frame[7:], q))
        _check_span(addr, q, 1, MAX_WRITE_REGS, "register write")
        if bc != 2 * q:
            raise ModbusError("FC16 byte count %d wrong for %d registers" % (bc, q))
        return Request(slave, 16, addr, q, _bytes_regs(frame, 7, q))
    raise ModbusError("unsupported function code %d" % fc)


# ---- responses --------------------------------------------------------------

def encode_response(slave, fc, values=None, addr=0, qty=0):
    """Normal response. Reads: values = registers/bits. Writes: echo addr and qty/value."""
    _slave(slave)
    if fc in (1, 2):
        if not values or len(values) > MAX_READ_BITS:
            raise ModbusError("bit count %d out of range 1..2000" % len(values or ()))
        data = pack_bits(values)
        body = bytes((slave, fc, len(data))) + data
    elif fc in (3, 4):
        if not values or len(values) > MAX_READ_REGS:
            raise ModbusError("register count %d out of range 1..125" % len(values or ()))
        data = _regs_bytes(values)
        body = bytes((slave, fc, len(data))) + data
    elif fc == 5:
        _u16(addr, "address")
        w = 0xFF00 if qty else 0
        body = bytes((slave, 5, addr >> 8, addr & 0xFF, w >> 8, 0))
    elif fc in (6, 15, 16):
        _u16(addr, "address")
        _u16(qty, "value" if fc == 6 else "quantity")
        body = bytes((slave, fc, addr >> 8, addr & 0xFF, qty >> 8, qty & 0xFF))
    else:
        raise ModbusError("unsupported function code %r" % (fc,))
    return add_crc(body)


def encode_exception(slave, fc, code):
    _slave(slave)
    if not 1 <= code <= 255:
        raise ModbusError("exception code %r out of range" % (code,))
    return add_crc(bytes((slave, (fc | 0x80) & 0xFF, code)))


def decode_response(frame, req=None):
    """Decode a response; with the request known, the quantity and echo are checked."""
    n = _frame(frame, 5)
    slave = frame[0]
    fc = frame[1]
    if fc & 0x80:
        if n != 5:
            raise ModbusError("exception response must be 5 bytes, got %d" % n)
        if frame[2] == 0:
            # code 0 is no exception at all: taken as one it would read as a normal answer
            raise ModbusError("exception response with code 0 (not a valid exception)")
        r = Response(slave, fc & 0x7F, exc=frame[2])
        _match(r, req)
        return r
    if fc in (1, 2, 3, 4):
        bc = frame[2]
        if n != 5 + bc:
            raise ModbusError("byte count %d does not match frame length %d" % (bc, n))
        if fc <= 2:
            qty = bc * 8
            if req is not None:
                qty = req.qty
                if bc != (qty + 7) >> 3:
                    raise ModbusError("byte count %d wrong for %d bits" % (bc, qty))
            r = Response(slave, fc, None if req is None else req.addr, qty,
                         unpack_bits(frame[3:], qty))
        else:
            if bc & 1:
                raise ModbusError("odd byte count %d for registers" % bc)
            qty = bc >> 1
            if req is not None and req.qty != qty:
                raise ModbusError("got %d registers, requested %d" % (qty, req.qty))
            r = Response(slave, fc, None if req is None else req.addr, qty,
                         _bytes_regs(frame, 3, qty))
        _match(r, req)
        return r
    if fc in (5, 6, 15, 16):
        if n != 8:
            raise ModbusError("FC%d response must be 8 bytes, got %d" % (fc, n))
        addr = (frame[2] << 8) | frame[3]
        v = (frame[4] << 8) | frame[5]
        if fc == 5:
            r = Response(slave, 5, addr, 1, [1 if v == 0xFF00 else 0])
        elif fc == 6:
            r = Response(slave, 6, addr, 1, [v])
        else:
            r = Response(slave, fc, addr, v)
        _match(r, req)
        if req is not None and (addr != req.addr or (fc >= 15 and v != req.qty)
                                or (fc <= 6 and r.values != req.values)):
            raise ModbusError("write echo does not match the request")
        return r
    raise ModbusError("unsupported function code %d" % fc)


def _match(r, req):
    if req is None:
        return
    if r.slave != req.slave:
        raise ModbusError("response from slave %d, expected %d" % (r.slave, req.slave))
    if r.fc != req.fc:
        raise ModbusError("response function %d, expected %d" % (r.fc, req.fc))


# ---- framing ----------------------------------------------------------------

def silence_us(baud):
    """Inter-frame silence t3.5: 3.5 chars of 11 bits; fixed 1750 us above 19200 baud."""
    if baud > 19200:
        return 1750
    return (38500000 + baud - 1) // baud  # 3.5 * 11 bits * 1e6 / baud, rounded up


def char_us(baud):
    return (11000000 + baud - 1) // baud


F_GAP = const(1)      # frame ended by silence
F_LEN = const(2)      # frame cut at the predicted length
F_CRC = const(4)      # CRC check failed
F_SHORT = const(8)    # too short to be a frame (noise)


class Framer:
    """Splits a received byte stream into frames.

    feed(chunk, t_us) with the arrival time of the chunk's last byte; a silence of
    t3.5 or more before a chunk closes the pending frame. expect(n) announces the
    length of the next frame (known from the request sent), which lets a response be
    returned as soon as it is complete instead of waiting for the silence.
    Returns a list of (frame_bytes, flags)."""

    def __init__(self, baud=9600):
        self.t35 = silence_us(baud)
        self.char = char_us(baud)
        self.buf = bytearray()
        self.last = None
        self.want = 0

    def expect(self, n):
        self.want = n

    def feed(self, chunk, t_us):
        out = []
        # t_us stamps the chunk's last byte; the silence is measured before its first.
        if self.buf and t_us - len(chunk) * self.char - self.last >= self.t35:
            self._flush(out, F_GAP)
        self.buf.extend(chunk)
        self.last = t_us
        b = self.buf
        if self.want and len(b) >= 5 and (b[1] & 0x80) and check_crc(b[:5]):
            self._cut(out, 5)  # exception responses are 5 bytes whatever was asked
        elif self.want and len(b) >= self.want:
            self._cut(out, self.want)
        return out

    def _cut(self, out, n):
        frame = bytes(self.buf[:n])
        self.buf = self.buf[n:]
        self.want = 0
        out.append((frame, F_LEN | (0 if check_crc(frame) else F_CRC)))

    def poll(self, t_us):
        """Call when no bytes arrived: closes the pending frame once t3.5 has passed."""
        out = []
        if self.buf and self.last is not None and t_us - self.last >= self.t35:
            self._flush(out, F_GAP)
        return out

    def flush(self):
        out = []
        if self.buf:
            self._flush(out, F_GAP)
        return out

    def _flush(self, out, flag):
        frame = bytes(self.buf)
        self.buf = bytearray()
        self.want = 0
        if len(frame) < 4:
            out.append((frame, flag | F_SHORT | F_CRC))
        else:
            out.append((frame, flag | (0 if check_crc(frame) else F_CRC)))


def split_stream(data, is_request_first=True):
    """Split a gapless byte stream of alternating requests and responses (no timing
    information) by predicted lengths, resynchronising on CRC after garbage.
    Yields (frame, kind) with kind 'req', 'rsp' or 'junk'."""
    i = 0
    n = len(data)
    want_req = is_request_first
    mv = memoryview(data)
    while i < n:
        try:
            ln = request_len(mv[i:]) if want_req else response_len(mv[i:])
        except ModbusError:
            ln = -1
        if ln > 0 and i + ln <= n:
            f = bytes(mv[i:i + ln])  # one copy, checked and handed out
            if check_crc(f):
                yield f, ("req" if want_req else "rsp")
                i += ln
                want_req = not want_req
                continue
        # try the other direction before calling it junk (a lost request or response)
        try:
            ln2 = response_len(mv[i:]) if want_req else request_len(mv[i:])
        except ModbusError:
            ln2 = -1
        if ln2 > 0 and i + ln2 <= n and check_crc(mv[i:i + ln2]):
            yield bytes(mv[i:i + ln2]), ("rsp" if want_req else "req")
            i += ln2
            continue
        if ln == 0 or (ln > 0 and i + ln > n):
            yield bytes(mv[i:]), "junk"
            return
        yield bytes(mv[i:i + 1]), "junk"
        i += 1
