"""Seeded fuzzing of everything that takes bytes from a bus or a file: the RTU codec
(decode_request / decode_response with and without the request, the Framer, split_stream),
the bus master's frame handling (a BusMaster polling a device that answers with the mutated
frame), and garbage trace files through trace.read/transactions, the importers and
`edgegw trace decode`. The only exceptions allowed are the module's own (ModbusError,
TraceError, a one-line UserError/exit 2). Bounded here; `make soak` runs >= 1,000,000 frames."""
import io
import json
import random

import pytest
from click.testing import CliRunner

from edgegw.cli import cli
from edgegw import cmd_trace
from edgefw import clock
from edgefw.busmaster import BusMaster
from protocols import modbus_rtu as rtu
from protocols.membus import MemBus
from protocols import trace

SEED_FRAMES = [
    bytes.fromhex(h) for h in (
        "01041000001134c6",
        "01042214cdff776b4080e80122034003e7000a0cff0b7f0d000cff0b810b7e000000b400b4d32e",
        "00840293" "01", "fe0400030001d5c5", "1103007c00020743", "110304008d008efbbd",
        "0083029131", "01101000000204000a000b", "010600050007", "01050003ff00",
        "010f000000080101", "0101120009003f22", "0181" "02c191")]
SEED_FRAMES = [f if rtu.check_crc(f) else rtu.add_crc(f) for f in SEED_FRAMES]


def mutate(rng, f):
    """One of: flip bits, replace/insert/delete bytes, truncate, extend, splice two frames;
    half of the results get a recomputed CRC so the decoder's checks past the CRC run."""
    b = bytearray(f)
    k = rng.randrange(8)
    if k == 0 and b:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif k == 1 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif k == 2:
        b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
    elif k == 3 and b:
        del b[rng.randrange(len(b))]
    elif k == 4:
        b = b[:rng.randrange(len(b) + 1)]
    elif k == 5:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    elif k == 6:
        b = b[:rng.randrange(len(b) + 1)] + rng.choice(SEED_FRAMES)
    else:
        b[1:2] = bytes((rng.choice((0, 0x80, 0x81, 0x83, 0x84, 0x90, 0xFF, 7, 17, 43)),))
    b = bytes(b)
    if rng.random() < 0.5 and len(b) >= 2:
        b = rtu.add_crc(b[:-2])
    return b


def _codec(rng, f, reqs):
    for fn in (rtu.decode_request, rtu.decode_response):
        try:
            fn(f)
        except rtu.ModbusError:
            pass
    try:
        rtu.decode_response(f, rng.choice(reqs))
    except rtu.ModbusError:
        pass
    for fn in (rtu.request_len, rtu.response_len):
        try:
            fn(f)
        except rtu.ModbusError:
            pass


class _AnswerBus(MemBus):
    """A bus whose device answers every request with the next fuzzed frame."""

    def __init__(self):
        MemBus.__init__(self, [])
        self.next = b""

    def write(self, frame):
        rtu.decode_request(bytes(frame))  # the master only ever sends valid requests
        self.rx = self.next
        return len(frame)


class _Dev:
    def __init__(self, name, slave, reads):
        self.name, self.slave, self.reads, self.period_ms = name, slave, reads, 0
        self.reads_ok = 0

    def on_read(self, fc, addr, values, now):
        assert len(values) == [q for q in self.reads if q[1] == addr][0][2]
        self.reads_ok += 1


def _master():
    bus = _AnswerBus()
    bm = BusMaster(bus, "fuzz", baud=115200, timeout_ms=0, retries=1, stale_polls=10 ** 9)
    bm.t35 = 0   # no inter-frame pause: the fuzz is about frames, not timing
    dev = _Dev("d", 1, [(4, 0x1000, 17), (1, 0x1200, 9), (3, 0, 2)])
    bm.add(dev)
    return bm, bus, dev


class _Time:
    """Injected bus time (clock.ticks_ms/us): each poll() of the master is 3 ms later, so a
    frame that never completes times out after a few polls whatever the host's speed."""

    def __init__(self):
        self.us = 0

    def ticks_us(self):
        return self.us & ((1 << 30) - 1)

    def ticks_ms(self):
        return (self.us // 1000) & ((1 << 30) - 1)


def _through_master(bm, bus, f, tm):
    bus.next = f
    sent = bm.stats()["d"]["requests"]
    for _ in range(40):   # send, receive or time out, and the retry
        bm.poll()
        tm.us += 3000
        if bm.state == 0 and bm.stats()["d"]["requests"] > sent and not bm.retry:
            break
    assert bm.errors == 0


def run_frames(n, seed, monkeypatch):
    rng = random.Random(seed)
    reqs = [rtu.decode_request(f) for f in SEED_FRAMES if _is_req(f)]
    tm = _Time()
    monkeypatch.setattr(clock, "ticks_us", tm.ticks_us)
    monkeypatch.setattr(clock, "ticks_ms", tm.ticks_ms)
    bm, bus, dev = _master()
    framer = rtu.Framer(19200)
    t = 0
    for i in range(n):
        f = mutate(rng, rng.choice(SEED_FRAMES))
        if rng.random() < 0.3:
            f = mutate(rng, f)
        _codec(rng, f, reqs)
        if i % 4 == 0:
            _through_master(bm, bus, f, tm)
        t += rng.randrange(0, 3000)
        if rng.random() < 0.2:
            framer.expect(rng.randrange(0, 300))
        framer.feed(f, t)
        framer.poll(t + rng.randrange(0, 3000))
        if i % 50 == 0:
            list(rtu.split_stream(f + mutate(rng, f), rng.random() < 0.5))
    return bm, dev


def _is_req(f):
    try:
        rtu.decode_request(f)
        return True
    except rtu.ModbusError:
        return False


def test_fuzz_codec_and_bus_master_20000_frames(monkeypatch):
    bm, dev = run_frames(20000, seed=14, monkeypatch=monkeypatch)
    st = bm.stats()["d"]
    # the fuzzed answers went through the master: some were usable, most were not
    assert st["requests"] > 4000 and st["crc"] + st["timeouts"] > 1000 and dev.reads_ok > 0


@pytest.mark.soak
def test_fuzz_codec_soak_1000000_frames(monkeypatch):
    bm, dev = run_frames(1000000, seed=1414, monkeypatch=monkeypatch)
    assert bm.stats()["d"]["requests"] > 200000 and dev.reads_ok > 0


# ---- trace files ---------------------------------------------------------------------------

def _good_trace():
    out = io.StringIO()
    w = trace.Writer(out, {"baud": 19200, "source": "fuzz"})
    t = 0
    for f in SEED_FRAMES:
        t += 1000
        w.frame(t, "bms", "req" if _is_req(f) else "rsp", f, trace.frame_flags(f))
    return out.getvalue()


JUNK_VALUES = (None, True, -1, 0, 10 ** 400, 1.5, "x", "", [], {}, [1], ["crc", 5], "zz", "0g",
               "123", "1" * 1001, {"a": 1})


def mutate_trace(rng, text):
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(7)
        i = rng.randrange(len(lines))
        if k == 0:      # a field replaced by junk
            try:
                rec = json.loads(lines[i])
                if isinstance(rec, dict) and rec:
                    rec[rng.choice(list(rec) + ["extra"])] = rng.choice(JUNK_VALUES)
                    lines[i] = json.dumps(rec)
            except (ValueError, RecursionError):
                pass
        elif k == 1 and lines[i]:   # byte damage
            j = rng.randrange(len(lines[i]))
            c = chr(rng.choice((0, 10, 34, 44, 58, 91, 123, 125, 0xE9, 0xFFFD)))
            lines[i] = lines[i][:j] + c + lines[i][j + 1:]
        elif k == 2:
            lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
        elif k == 3:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif k == 4:
            del lines[i]
        elif k == 5:
            lines[i] = rng.choice([">>> 01.04.10.00.00.11.34.C6", "<<< 01.84.00.43.00", "[" * 3000,
                                   "0x01 0x84 0x00", "01 04 22 14", "{}", "null", "<<< zz.zz"])
        else:
            lines[i] = json.dumps(rng.choice(JUNK_VALUES))
    return "\n".join(lines)


def _dotted(rng):
    lines = []
    for f in SEED_FRAMES:
        f = mutate(rng, f) if rng.random() < 0.3 else f
        lines.append(("<<< " if rng.random() < 0.5 else ">>> ") + ".".join("%02X" % b for b in f))
    if rng.random() < 0.3:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(("???", ">>>", "<<< 1.2.3", "#c")))
    return lines


READS = [(1, 4, 0x1000, 17), (1, 4, 0x1100, 26), (1, 1, 0x1200, 144), (2, 3, 0, 2)]


def _sniffer(rng, fmt):
    """A responses-and-requests dump in 0x.. or plain hex, mutated, a few frames a line."""
    frames = [mutate(rng, f) if rng.random() < 0.4 else f
              for f in rng.sample(SEED_FRAMES, rng.randint(1, len(SEED_FRAMES)))]
    lines = []
    while frames:
        k = rng.randint(1, 3)
        b = b"".join(frames[:k])
        frames = frames[k:]
        if fmt == "0x":
            lines.append(" ".join("0x%02X" % x for x in b))
        else:
            lines.append(rng.choice(("", "00000010: ")) + " ".join("%02x" % x for x in b))
    if rng.random() < 0.2:
        i = rng.randrange(len(lines))
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)] + rng.choice(("zz", "0x", "|x|", ""))
    return lines


def test_fuzz_500_garbage_trace_files(tmp_path):
    rng = random.Random(1414)
    good = _good_trace()
    devs = cmd_trace.Devices(["1=seplos_v3"])
    bad_exit = []
    for i in range(500):
        text = mutate_trace(rng, good)
        try:
            h, recs = trace.read(io.StringIO(text))
            recs = list(recs)
            list(trace.transactions(recs))
            s = cmd_trace.stats(cmd_trace.decode_records(recs, devs, 19200))
            assert s["frames"] == len(recs)
        except trace.TraceError as e:
            assert "line" in str(e)
        try:
            trace.import_dotted(_dotted(rng))
        except trace.TraceError as e:
            assert "line" in str(e)
        for fmt, lines in (("0x", _sniffer(rng, "0x")), ("hex", _sniffer(rng, "hex"))):
            trace.detect(lines)
            try:
                recs = trace.import_hex(lines, fmt, reads=READS)
                list(trace.transactions(recs))
                cmd_trace.decode_records(recs, devs, 19200)
            except trace.TraceError as e:
                assert "line" in str(e) or "no frames" in str(e)
        if i % 10 == 0:   # the command itself, on the file as a user would pass it
            p = tmp_path / ("t%d.%s" % (i, "jsonl" if i % 20 else "txt"))
            p.write_bytes(text.encode("utf-8", "surrogatepass") if i % 20 else
                          "\n".join(_dotted(rng)).encode())
            r = CliRunner().invoke(cli, ["trace", "decode", str(p), "--map", "1=seplos_v3"])
            if r.exception is not None and not isinstance(r.exception, SystemExit) \
                    or r.exit_code not in (0, 2):
                bad_exit.append((i, r.exit_code, repr(r.exception), r.output[-300:]))
            elif r.exit_code == 2:
                assert r.output.count("\n") == 1 and r.output.startswith("Error: "), r.output
            if i % 20 == 0:
                r = CliRunner().invoke(cli, ["replay", str(p), "--port", "loop://",
                                             "--duration", "0", "--json"])
                if r.exception is not None and not isinstance(r.exception, SystemExit) \
                        or r.exit_code not in (0, 2):
                    bad_exit.append((i, "replay", r.exit_code, repr(r.exception)))
    assert bad_exit == []
