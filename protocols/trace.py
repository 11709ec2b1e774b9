# Bus traces as JSON Lines (spec: docs/trace-format.md): one record per frame, a header
# first. Writer (gateway or host sniffer), read, pairing requests with responses, and an
# importer for dotted-hex captures (">>> 01.04.10.00..." / "<<< 01.04.22..."). Runs on
# MicroPython and CPython.
import json
import binascii

from protocols import modbus_rtu as rtu

VERSION = 1
DIRS = ("req", "rsp", "junk")
# Framer flag bits -> names, in a fixed order so both runtimes write identical lines
FLAG_NAMES = ((rtu.F_CRC, "crc"), (rtu.F_GAP, "gap"), (rtu.F_LEN, "len"), (rtu.F_SHORT, "short"))
T_MAX = 1 << 53  # us (285 years): bounds what a reader must represent (floats stay exact)


class TraceError(ValueError):
    """Malformed trace or capture; the message names the line and the problem."""


def flag_list(flags):
    """Framer flag bits (int) or a list of names -> list of names."""
    if isinstance(flags, int):
        return [n for b, n in FLAG_NAMES if flags & b]
    return list(flags or ())


def frame_flags(data):
    """Flags a frame earns on its own: bad CRC, too short to be a frame."""
    if len(data) < 4:
        return ["crc", "short"]
    return [] if rtu.check_crc(data) else ["crc"]


def _q(s):
    return json.dumps(s)


class Writer:
    """Writes the header at once, then one line per frame: w.frame(t_us, bus, dir, data, flags)."""

    def __init__(self, f, header):
        if not isinstance(header, dict):
            raise TraceError("header must be a dict")
        h = {"trace": VERSION}
        for k in header:
            h[k] = header[k]
        if not isinstance(h.get("baud"), int) or h["baud"] <= 0:
            raise TraceError("header: baud must be a positive int")
        if not isinstance(h.get("source"), str):
            raise TraceError("header: source must be a string")
        self.f = f
        self.n = 0
        f.write(json.dumps(h) + "\n")

    def frame(self, t_us, bus, d, data, flags=0, t0_us=None):
        """t0_us: when the frame's first byte arrived, if measured (a tap on a pty or TCP
        stream, where a frame arrives at once) or known (imports); else left out."""
        if d not in DIRS:
            raise TraceError("dir %r not one of req/rsp/junk" % (d,))
        fl = flag_list(flags)
        t0 = "" if t0_us is None else '"t0_us": %d, ' % t0_us
        self.f.write('{"t_us": %d, %s"bus": %s, "dir": "%s", "hex": "%s", "flags": [%s]}\n' % (
            t_us, t0, _q(bus), d, binascii.hexlify(bytes(data)).decode(),
            ", ".join('"%s"' % x for x in fl)))
        self.n += 1

    def write(self, rec):
        self.frame(rec["t_us"], rec["bus"], rec["dir"], binascii.unhexlify(rec["hex"]),
                   rec.get("flags"), rec.get("t0_us"))


def check_record(rec, where):
    """Validate one parsed record (dict); returns it. TraceError names the field."""
    if not isinstance(rec, dict):
        raise TraceError("%s: record is not an object" % where)
    t = rec.get("t_us")
    if not isinstance(t, int) or isinstance(t, bool):
        raise TraceError("%s: t_us must be an integer" % where)
    if t < 0 or t > T_MAX:
        raise TraceError("%s: t_us %s out of range 0..%d" % (where, str(t)[:24], T_MAX))
    t0 = rec.get("t0_us")
    if t0 is not None and (not isinstance(t0, int) or isinstance(t0, bool) or t0 < 0 or t0 > t):
        raise TraceError("%s: t0_us must be an integer in 0..t_us" % where)
    if not isinstance(rec.get("bus"), str):
        raise TraceError("%s: bus must be a string" % where)
    if rec.get("dir") not in DIRS:
        raise TraceError("%s: dir %r not one of req/rsp/junk" % (where, rec.get("dir")))
    h = rec.get("hex")
    if not isinstance(h, str) or len(h) & 1:
        raise TraceError("%s: hex must be an even-length hex string" % where)
    try:
        binascii.unhexlify(h)
    except ValueError:
        raise TraceError("%s: hex %r is not hexadecimal" % (where, h[:16]))
    fl = rec.get("flags", [])
    if not isinstance(fl, list):
        raise TraceError("%s: flags must be a list" % where)
    for x in fl:
        if not isinstance(x, str):
            raise TraceError("%s: flags must be a list of names, got %r" % (where, x))
    rec["flags"] = fl
    return rec


def _records(f, close, name):
    n = 1
    try:
        while True:
            try:
                line = f.readline()
            except ValueError:  # UnicodeError: the file is not UTF-8 text
                raise TraceError("%s line %d: not UTF-8 text" % (name, n + 1))
            if not line:
                break
            n += 1
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except Exception:  # ValueError; RecursionError/RuntimeError on deep nesting
                raise TraceError("%s line %d: not JSON" % (name, n))
            yield check_record(rec, "%s line %d" % (name, n))
    finally:
        if close:
            f.close()


def read(path_or_file):
    """(header, iterator of records). Accepts a path or an open text file."""
    if isinstance(path_or_file, str):
        try:
            f = open(path_or_file)
        except OSError:
            raise TraceError("%s: cannot open" % path_or_file)
        close = True
        name = path_or_file
    else:
        f = path_or_file
        close = False
        name = "trace"
    try:
        first = f.readline()
        h = json.loads(first)
    except Exception:  # not JSON, not text (UnicodeError), nested too deep
        h = None
    err = None
    if not isinstance(h, dict) or h.get("trace") != VERSION:
        err = "not a trace header ({\"trace\": 1, ...})"
    elif "baud" in h and (not isinstance(h["baud"], int) or isinstance(h["baud"], bool)
                          or not 0 < h["baud"] <= 100000000):
        err = "baud must be a positive integer (bits/s)"
    if err is not None:
        if close:
            f.close()
        raise TraceError("%s line 1: %s" % (name, err))
    return h, _records(f, close, name)


def data(rec):
    """The frame bytes of a record."""
    return binascii.unhexlify(rec["hex"])


def start_us(rec, char_us):
    """When the frame's first byte arrived: t0_us when recorded, else estimated from its
    length on the wire (t_us - bytes x char_us)."""
    t0 = rec.get("t0_us")
    if t0 is not None:
        return t0
    return rec["t_us"] - (len(rec["hex"]) >> 1) * char_us


def latency_us(req_rec, rsp_rec, char_us):
    """Response start - request end (us), or None when the records cannot say (a response
    estimated to start before its request ended: a trace from a stream without t0_us)."""
    lat = start_us(rsp_rec, char_us) - req_rec["t_us"]
    return lat if lat >= 0 else None


def transactions(records):
    """Pair requests with the responses that follow them. Yields (req, rsp, rec_req, rec_rsp,
    error): req a modbus_rtu.Request or None (did not decode), rsp a Response or None,
    error a str or None (a frame that does not decode, a response without request, a
    request left unanswered). A response to an undecodable request is still decoded."""
    pend = None  # (Request or None, record, error or None)
    for rec in records:
        d = rec["dir"]
        b = data(rec)
        if d == "req":
            if pend is not None:
                yield pend[0], None, pend[1], None, pend[2] or "no response"
            try:
                pend = (rtu.decode_request(b), rec, None)
            except rtu.ModbusError as e:
                pend = (None, rec, "request: %s" % e)
        elif d == "rsp":
            req, rq, err = pend if pend is not None else (None, None, "response without request")
            pend = None
            try:
                rsp = rtu.decode_response(b, req)
            except rtu.ModbusError as e:
                yield req, None, rq, rec, err or "response: %s" % e
                continue
            yield req, rsp, rq, rec, err
        else:
            yield None, None, rec, None, "junk"
    if pend is not None:
        yield pend[0], None, pend[1], None, pend[2] or "no response"


def _lines_of(path_or_lines):
    if not isinstance(path_or_lines, str):
        return path_or_lines
    try:
        with open(path_or_lines) as f:
            return f.read().split("\n")
    except OSError:
        raise TraceError("%s: cannot open" % path_or_lines)
    except ValueError:  # UnicodeError
        raise TraceError("%s: not UTF-8 text" % path_or_lines)


def _data_lines(lines):
    """(line number, stripped text) of the lines that carry data: blank lines and '#'
    comments skipped."""
    n = 0
    for line in lines:
        n += 1
        s = line.strip()
        if s and s[0] != "#":
            yield n, s


def import_dotted(path_or_lines, bus="rs485", baud=19200, turnaround_us=5000, idle_us=50000):
    """Records from a dotted-hex capture: '>>> 00.04.20.00...' requests and '<<< ...'
    responses, one frame a line ('#' comments and blank lines skipped). The capture has no
    timestamps: t_us is synthesised from the baud rate (frame end = start + bytes x 11 bits),
    turnaround_us before a response and idle_us before the next request."""
    cu = rtu.char_us(baud)
    t = 0
    out = []
    for n, s in _data_lines(_lines_of(path_or_lines)):
        if s[:3] == ">>>":
            d = "req"
            t += idle_us if out else 0
        elif s[:3] == "<<<":
            d = "rsp"
            t += turnaround_us
        else:
            raise TraceError("line %d: expected '>>>' or '<<<', got %r" % (n, s[:10]))
        h = s[3:].strip().replace(".", "").replace(" ", "")
        try:
            b = binascii.unhexlify(h)
        except ValueError:
            raise TraceError("line %d: bad dotted hex %r" % (n, s[3:20]))
        if not b:
            raise TraceError("line %d: empty frame" % n)
        t0 = t
        t += len(b) * cu
        out.append({"t_us": t, "t0_us": t0, "bus": bus, "dir": d,
                    "hex": binascii.hexlify(b).decode(), "flags": frame_flags(b)})
    return out


# ---- sniffer formats: '0x..' hex and plain hex dumps -----------------------------------------

FORMATS = ("jsonl", "dotted", "0x", "hex")


def detect(lines):
    """The format of a capture from its first meaningful line: 'jsonl' ({...}), 'dotted'
    (>>> / <<<), '0x' (0x01 0x04 ...) or 'hex' (plain hex bytes); None when none fits."""
    for line in lines:
        s = line.strip()
        if not s or s[0] == "#":
            continue
        if s[0] == "{":
            return "jsonl"
        if s[:3] in (">>>", "<<<"):
            return "dotted"
        t = s.replace(",", " ").split()
        if t[0][:2] in ("0x", "0X"):
            return "0x"
        try:
            _hex_line(s, 1)
            return "hex"
        except TraceError:
            return None
    return None


def _hex_line(s, n):
    """Bytes of one plain hex dump line: '01 04 22 ...', '010422...', with an optional
    'offset:' first token (xxd, od) and a trailing |ascii| column (hexdump -C)."""
    bar = s.find("|")
    if bar >= 0:
        s = s[:bar]
    t = s.split()
    if t and t[0][-1:] == ":":
        t = t[1:]
    h = "".join(t)
    if len(h) & 1:
        raise TraceError("line %d: odd number of hex digits" % n)
    try:
        return binascii.unhexlify(h)
    except ValueError:
        raise TraceError("line %d: not hex %r" % (n, s[:20]))


def _stream_bytes(lines, fmt):
    out = bytearray()
    for n, s in _data_lines(lines):
        if fmt == "0x":
            for tok in s.replace(",", " ").split():
                if tok[:2] not in ("0x", "0X") or not 3 <= len(tok) <= 4:
                    raise TraceError("line %d: %r is not a 0x.. byte" % (n, tok[:10]))
                try:
                    out.append(int(tok[2:], 16))
                except ValueError:
                    raise TraceError("line %d: %r is not a 0x.. byte" % (n, tok[:10]))
        else:
            out.extend(_hex_line(s, n))
    return bytes(out)


def shapes(reads):
    """{(slave, fc, byte count): (addr, qty)} for reads [(slave, fc, addr, qty)]: the read
    each response shape answers. A shape two reads share is left out (ambiguous)."""
    out = {}
    seen = {}
    for slave, fc, addr, qty in reads:
        if fc in (1, 2):
            bc = (qty + 7) >> 3
        elif fc in (3, 4):
            bc = 2 * qty
        else:
            continue
        k = (slave, fc, bc)
        if k in seen and seen[k] != (addr, qty):
            out.pop(k, None)
            continue
        seen[k] = (addr, qty)
        out[k] = (addr, qty)
    return out


def import_hex(path_or_lines, fmt="hex", bus="rs485", baud=19200, reads=(),
               turnaround_us=5000, idle_us=50000):
    """Records from a sniffer dump without timing: fmt '0x' (space- or comma-separated 0x..
    bytes, any number of frames a line) or 'hex' (plain hex dump). The bytes are split into
    frames by their predicted lengths and CRC (modbus_rtu.split_stream). A response with no
    request before it (sniffers that log one direction) is paired by shape: reads
    [(slave, fc, addr, qty)] name the reads the master makes, and a response whose slave,
    function and byte count match exactly one of them gets that request synthesised
    before it (flag 'synth'). t_us is synthesised as in import_dotted."""
    if fmt not in ("0x", "hex"):
        raise TraceError("format %r is not 0x or hex" % (fmt,))
    data = _stream_bytes(_lines_of(path_or_lines), fmt)
    if not data:
        raise TraceError("no frames: the file holds no hex bytes")
    by_shape = shapes(reads)
    cu = rtu.char_us(baud)
    t = 0
    out = []
    last = None
    for f, kind in rtu.split_stream(data, True):
        if kind == "rsp" and last != "req" and len(f) >= 3:
            got = by_shape.get((f[0], f[1] & 0x7F, f[2])) if not f[1] & 0x80 else None
            if got is not None:
                q = rtu.encode_request(f[0], f[1], got[0], got[1])
                t += idle_us if out else 0
                out.append({"t_us": t + len(q) * cu, "t0_us": t, "bus": bus, "dir": "req",
                            "hex": binascii.hexlify(q).decode(), "flags": ["synth"]})
                t += len(q) * cu
                last = "req"
        if kind == "rsp":
            t += turnaround_us if last == "req" else idle_us
        elif out:
            t += idle_us
        out.append({"t_us": t + len(f) * cu, "t0_us": t, "bus": bus, "dir": kind,
                    "hex": binascii.hexlify(f).decode(), "flags": frame_flags(f)})
        t += len(f) * cu
        last = kind
    return out
