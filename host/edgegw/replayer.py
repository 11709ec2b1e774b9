"""Replay a captured bus trace against a gateway: every slave device in the trace, played back.

Device mode (default): each request the gateway sends is answered with the recorded response
to that same request, after the recorded latency. Several recordings of one request are
played in turn, so values move as they did in the capture. A read the trace never saw is
composed from the registers seen in recorded responses; a write never seen is acknowledged
(echo) and remembered; a read outside everything seen gets exception 2; a slave the trace
does not contain stays silent (as on a real bus).
Raw mode: every recorded frame is written at its recorded time, as captured.

Faults (Faults): drop a response with probability P, corrupt its CRC with probability P,
delay every response by MS, noise bursts (random bytes on the line before a response),
a slave silent in a time window. Importable: the HIL suite drives Replayer directly.

Times: a record's t_us is the time of its last byte (docs/trace-format.md); a frame of n
bytes takes n character times on the wire, so it started n characters earlier. Latency =
response start - request end. Timing "wire" (a UART: a write starts the frame on the line)
or "arrival" (a pty or TCP stream: a write delivers the whole frame at once, i.e. it is the
frame's end): the response is written so that its start is request end + latency either way.

Transport: a pty or socket adds its own delivery delay on both legs (the request reaches us
late, our response reaches the gateway late: ~0.1-0.2 ms each on Linux ptys, a constant bias
that alone is half a character at 19200 baud). transport_us, the measured round trip of
that transport, is taken off every response time; "auto" measures it on a pty pair at open
(calibrate_pty) for a pty port and uses 0 elsewhere (a UART adapter's latency is its own:
an FTDI's latency timer, 16 ms by default, dwarfs all this; set it to 1 ms for replay)."""
import os
import random
import select
import threading
import time

from protocols import modbus_rtu as rtu
from protocols import trace


class FaultError(ValueError):
    """A bad fault option or file; the message names the field."""


class Faults:
    """drop, corrupt_crc, noise_burst: probabilities 0..1 per response; delay_ms: added to
    every response; silent: list of (slave, t0_s, t1_s) windows from replay start."""

    FIELDS = ("drop", "corrupt_crc", "delay_ms", "noise_burst", "silent", "seed")

    def __init__(self, drop=0.0, corrupt_crc=0.0, delay_ms=0, noise_burst=0.0, silent=(),
                 seed=1):
        for name, p in (("drop", drop), ("corrupt_crc", corrupt_crc),
                        ("noise_burst", noise_burst)):
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
                raise FaultError("%s: %r is not a probability 0..1" % (name, p))
        if not isinstance(delay_ms, (int, float)) or isinstance(delay_ms, bool) \
                or not 0 <= delay_ms <= 60000:
            raise FaultError("delay_ms: %r out of range 0..60000" % (delay_ms,))
        self.drop = float(drop)
        self.corrupt_crc = float(corrupt_crc)
        self.delay_ms = delay_ms
        self.noise_burst = float(noise_burst)
        self.silent = [parse_silent(s) if isinstance(s, str) else _silent_tuple(s, i)
                       for i, s in enumerate(silent)]
        self.seed = seed

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise FaultError("faults: must be a JSON object with %s" % ", ".join(cls.FIELDS))
        for k in d:
            if k not in cls.FIELDS:
                raise FaultError("%s: unknown fault (use %s)" % (k, ", ".join(cls.FIELDS)))
        return cls(**d)

    @classmethod
    def load(cls, path):
        from edgegw.cli import read_json
        return cls.from_dict(read_json(path, "faults file", FaultError))

    def is_silent(self, slave, t_s):
        for s, t0, t1 in self.silent:
            if s == slave and t0 <= t_s < t1:
                return True
        return False

    def any(self):
        return bool(self.drop or self.corrupt_crc or self.delay_ms or self.noise_burst
                    or self.silent)

    def as_dict(self):
        return {"drop": self.drop, "corrupt_crc": self.corrupt_crc, "delay_ms": self.delay_ms,
                "noise_burst": self.noise_burst, "seed": self.seed,
                "silent": [{"slave": s, "t0": a, "t1": b} for s, a, b in self.silent]}


def _silent_tuple(s, i):
    try:
        slave, t0, t1 = int(s["slave"]), float(s["t0"]), float(s["t1"])
    except (KeyError, TypeError, ValueError):
        raise FaultError("silent[%d]: needs {\"slave\": int, \"t0\": s, \"t1\": s}" % i)
    if not 0 <= slave <= 255 or t1 <= t0:
        raise FaultError("silent[%d]: slave 0..255 and t0 < t1" % i)
    return slave, t0, t1


def parse_silent(text):
    """'3@10-40' -> (3, 10.0, 40.0): slave 3 silent from 10 s to 40 s after the start."""
    try:
        slave, win = text.split("@")
        t0, t1 = win.split("-")
        slave, t0, t1 = int(slave, 0), float(t0), float(t1)
    except ValueError:
        raise FaultError("--silent %r: use SLAVE@T0-T1 in seconds, e.g. 3@10-40" % text)
    if not 0 <= slave <= 255 or t1 <= t0:
        raise FaultError("--silent %r: slave 0..255 and T0 < T1" % text)
    return slave, t0, t1


def frame_bytes(rec):
    return bytes.fromhex(rec["hex"])


def pairs(records, baud, timeout_us=None):
    """[(request, response or None, latency_us or None)] from trace records: a response
    follows its request from the same slave with the same function; latency is from the
    request's last byte to the response's first."""
    char = rtu.char_us(baud)
    out = []
    pend = None
    for r in records:
        d = r.get("dir")
        if d == "req":
            if pend is not None:
                out.append((pend[0], None, None))
            b = frame_bytes(r)
            pend = (b, r)
        elif d == "rsp" and pend is not None:
            b = frame_bytes(r)
            req = pend[0]
            if len(b) >= 2 and b[0] == req[0] and (b[1] & 0x7F) == req[1]:
                out.append((req, b, trace.latency_us(pend[1], r, char)))
                pend = None
    if pend is not None:
        out.append((pend[0], None, None))
    return out


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


class Replayer:
    """Plays the slaves of a trace. respond() is the pure decision; serve() runs it on a
    pyserial port; start()/stop() in a thread."""

    def __init__(self, records, baud=9600, faults=None, default_latency_us=3000,
                 timing="arrival", transport_us=0):
        self.records = list(records)
        self.baud = baud
        self.timing = timing
        self.transport_us = transport_us
        self._fd = None
        self.char_us = rtu.char_us(baud)
        self.t35_us = rtu.silence_us(baud)
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.table = {}     # request bytes -> [(response or None, latency_us)]
        self.turn = {}      # request bytes -> next index
        self.image = {}     # (slave, table fc) -> {addr: value}
        lats = {}
        for req, rsp, lat in pairs(self.records, baud):
            self.table.setdefault(req, []).append((rsp, lat))
            if rsp is not None and lat is not None:
                lats.setdefault(req[0], []).append(lat)
        self.slaves = set(req[0] for req in self.table)
        self.slave_lat = {s: _median(v) for s, v in lats.items()}
        self.default_lat = _median([x for v in lats.values() for x in v]) or default_latency_us
        for req, rsps in self.table.items():
            for rsp, _ in rsps:
                self._learn(req, rsp)
        self.stats = dict.fromkeys(("requests", "answered", "exact", "composed", "echo",
                                    "exception", "unknown", "timeout", "dropped", "corrupted",
                                    "noise", "silenced", "bad_requests"), 0)
        self.log = []        # (t_req_end_s, request, response or None, latency_us wanted, sent)
        self._stop = threading.Event()
        self._th = None
        self.ser = None
        self.t0 = None

    # ---- the decision ------------------------------------------------------------------

    def _learn(self, req, rsp):
        """Remember register/bit values from a read response or a write request."""
        try:
            q = rtu.decode_request(req)
        except rtu.ModbusError:
            return
        if q.fc in (5, 6, 15, 16):
            t = self.image.setdefault((q.slave, 1 if q.fc in (5, 15) else 3), {})
            for i, v in enumerate(q.values):
                t[q.addr + i] = v
            return
        if rsp is None:
            return
        try:
            r = rtu.decode_response(rsp, q)
        except rtu.ModbusError:
            return
        if r.exc:
            return
        t = self.image.setdefault((q.slave, q.fc), {})
        for i, v in enumerate(r.values):
            t[q.addr + i] = v

    def _compose(self, q):
        t = self.image.get((q.slave, q.fc))
        if not t:
            return None
        vals = [t.get(q.addr + i) for i in range(q.qty)]
        if None in vals:
            return None
        return rtu.encode_response(q.slave, q.fc, vals)

    def respond(self, req, t_s=0.0):
        """(response bytes or None, latency_us) for a request frame received t_s seconds
        after the start; faults other than silence are applied by the sender."""
        self.stats["requests"] += 1
        rec = self.table.get(bytes(req))
        if rec:
            i = self.turn.get(req, 0)
            self.turn[req] = (i + 1) % len(rec)
            rsp, lat = rec[i]
            if rsp is None:
                self.stats["timeout"] += 1
                return None, None
            self._learn(req, rsp)
            self.stats["exact"] += 1
            return rsp, lat if lat is not None else self.slave_lat.get(req[0], self.default_lat)
        try:
            q = rtu.decode_request(req)
        except rtu.ModbusError:
            self.stats["bad_requests"] += 1
            return None, None
        if q.slave not in self.slaves or q.slave == 0:
            self.stats["unknown"] += 1
            return None, None
        lat = self.slave_lat.get(q.slave, self.default_lat)
        if q.fc in (5, 6, 15, 16):
            self._learn(req, None)
            self.stats["echo"] += 1
            if q.fc in (5, 6):
                return bytes(req), lat
            return rtu.encode_response(q.slave, q.fc, addr=q.addr, qty=q.qty), lat
        rsp = self._compose(q)
        if rsp is not None:
            self.stats["composed"] += 1
            return rsp, lat
        self.stats["exception"] += 1
        return rtu.encode_exception(q.slave, q.fc, 2), lat

    # ---- on a port ---------------------------------------------------------------------

    def open(self, url, timing="auto", transport_us="auto"):
        import serial
        self.ser = serial.serial_for_url(url, baudrate=self.baud, timeout=0)
        self.timing = timing_for(url) if timing == "auto" else timing
        if transport_us == "auto":
            transport_us = calibrate_pty() if _is_pty(url) else 0
        self.transport_us = int(transport_us)
        try:
            self._fd = self.ser.fileno()
        except Exception:
            self._fd = None     # loop://, socket://: pyserial's own read/write
        return self.ser

    def _lead(self, n):
        """How long after a frame's start to write it (see Times above), less the
        transport's round trip (see Transport above)."""
        return (n * self.char_us if self.timing == "arrival" else 0) - self.transport_us

    def _write(self, data):
        # os.write on the fd: pyserial's write adds ~70 us of Python before the bytes move
        if self._fd is None:
            self.ser.write(data)
            return
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(self._fd, mv):]

    def _now_us(self):
        return time.monotonic_ns() // 1000

    def _wait_until(self, t_us):
        while True:
            d = t_us - self._now_us()
            if d <= 0:
                return
            if d > 2500:
                time.sleep((d - 2000) / 1e6)  # sleep most of it, spin the last 2 ms
            else:
                time.sleep(0)  # the spin lets other threads (a test's master) run

    def _read(self, timeout_s):
        ser = self.ser
        fd = self._fd
        if fd is not None:
            r, _, _ = select.select([fd], [], [], timeout_s)
            if not r:
                return b""
            try:
                return os.read(fd, 4096)
            except BlockingIOError:
                return b""
        n = ser.in_waiting
        if n:
            return ser.read(n)
        time.sleep(min(timeout_s, 0.0005))
        return b""

    def _send(self, req, rsp, lat, t_end_us):
        f = self.faults
        t_rel = (t_end_us - self.t0) / 1e6
        if f.is_silent(req[0], t_rel):
            self.stats["silenced"] += 1
            return None
        if f.drop and self.rng.random() < f.drop:
            self.stats["dropped"] += 1
            return None
        if f.corrupt_crc and self.rng.random() < f.corrupt_crc:
            rsp = rsp[:-1] + bytes(((rsp[-1] ^ 0x5A) or 1,))
            self.stats["corrupted"] += 1
        at = t_end_us + lat + int(f.delay_ms * 1000)
        if f.noise_burst and self.rng.random() < f.noise_burst:
            noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(4, 12)))
            self._write(noise)
            self.stats["noise"] += 1
            # the response still comes, after a proper silence behind the noise
            at = max(at, self._now_us() + len(noise) * self.char_us + self.t35_us)
        self._wait_until(at + self._lead(len(rsp)))
        self._write(rsp)
        self.stats["answered"] += 1
        return at

    def serve(self, duration=None):
        """Answer requests on the open port until stop() (or duration seconds)."""
        buf = bytearray()
        last = None
        self.t0 = self._now_us()
        end = None if duration is None else self.t0 + int(duration * 1e6)
        while not self._stop.is_set() and (end is None or self._now_us() < end):
            chunk = self._read(0.05 if not buf else self.t35_us / 1e6)
            now = self._now_us()
            if not chunk:
                if buf and now - last >= self.t35_us:
                    self.stats["bad_requests"] += 1   # an incomplete frame: silence ends it
                    buf = bytearray()
                continue
            if buf and now - len(chunk) * self.char_us - last >= self.t35_us:
                buf = bytearray()                      # stale partial frame
            buf.extend(chunk)
            last = now
            while buf:
                try:
                    n = rtu.request_len(buf)
                except rtu.ModbusError:
                    n = -1
                if n == 0 or (n > 0 and len(buf) < n):
                    break
                if n < 0 or not rtu.check_crc(buf[:n]):
                    # garbage or a corrupted request: a slave ignores it until silence
                    self.stats["bad_requests"] += 1
                    buf = bytearray()
                    break
                req = bytes(buf[:n])
                del buf[:n]
                rsp, lat = self.respond(req, (now - self.t0) / 1e6)
                sent = None
                if rsp is not None:
                    sent = self._send(req, rsp, lat, now)
                self.log.append(((now - self.t0) / 1e6, req, rsp, lat, sent))

    def play_raw(self, speed=1.0):
        """Write every recorded frame at its recorded time (faults apply to responses)."""
        recs = [r for r in self.records if "hex" in r and "t_us" in r]
        if not recs:
            return
        base = recs[0]["t_us"] - len(frame_bytes(recs[0])) * self.char_us
        self.t0 = self._now_us()
        for r in recs:
            if self._stop.is_set():
                return
            b = frame_bytes(r)
            start = r["t_us"] - len(b) * self.char_us   # recorded start of the frame
            at = self.t0 + int((start - base) / speed)
            if r.get("dir") == "rsp" and b:
                f = self.faults
                if f.is_silent(b[0], (at - self.t0) / 1e6):
                    self.stats["silenced"] += 1
                    continue
                if f.drop and self.rng.random() < f.drop:
                    self.stats["dropped"] += 1
                    continue
                if f.corrupt_crc and self.rng.random() < f.corrupt_crc:
                    b = b[:-1] + bytes(((b[-1] ^ 0x5A) or 1,))
                    self.stats["corrupted"] += 1
                at += int(f.delay_ms * 1000)
            self._wait_until(at + self._lead(len(b)))
            self._write(b)
            self.stats["answered"] += 1

    def start(self, url=None, raw=False, speed=1.0, timing="auto"):
        if url is not None:
            self.open(url, timing)
        self._stop.clear()
        target = (lambda: self.play_raw(speed)) if raw else self.serve
        self._th = threading.Thread(target=target, daemon=True, name="replayer")
        self._th.start()
        return self

    def stop(self):
        self._stop.set()
        if self._th is not None:
            self._th.join(5)
            self._th = None
        if self.ser is not None:
            try:
                self.ser.close()
            except OSError:      # the adapter was unplugged: nothing left to close
                pass
            self.ser = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def _is_pty(url):
    """A Unix98 pty slave (Linux majors 136-143), not a UART or USB adapter."""
    try:
        return 136 <= os.major(os.stat(url).st_rdev) <= 143
    except (OSError, ValueError, AttributeError):
        return False


_CAL = []


def calibrate_pty(n=24, gap_s=0.03, hold_s=0.01):
    """One pty round trip (us) as a replayed exchange pays it: the request's delivery to a
    process that has idled gap_s, plus the response's delivery to one that has idled
    hold_s (a sleeping process wakes later than a busy one: ~0.1 ms vs ~0.05 ms per leg
    here). Measured with a forked echo on a pty pair, the two legs timed on the shared
    monotonic clock; the median. Once per process (n * (gap_s + hold_s) seconds)."""
    if _CAL:
        return _CAL[0]
    import pty
    import struct
    import tty
    m, s = pty.openpty()
    tty.setraw(m)
    tty.setraw(s)
    pid = os.fork()
    if pid == 0:    # the echo: answers hold_s after a request with when it read it
        try:
            for _ in range(n):
                select.select([s], [], [], 2.0)
                os.read(s, 64)
                t_rd = time.monotonic_ns()
                time.sleep(hold_s)
                os.write(s, struct.pack("<qq", t_rd, time.monotonic_ns()))
        finally:
            os._exit(0)
    legs = []
    try:
        for _ in range(n):
            time.sleep(gap_s)
            t_wr = time.monotonic_ns()
            os.write(m, b"\x01\x03\x00\x00\x00\x01\x84\x0a")
            got = b""
            while len(got) < 16:
                r, _, _ = select.select([m], [], [], 2.0)
                if not r:
                    return 0
                got += os.read(m, 64)
            t_rd = time.monotonic_ns()
            e_rd, e_wr = struct.unpack("<qq", got[:16])
            legs.append(((e_rd - t_wr) + (t_rd - e_wr)) // 1000)
    finally:
        if len(legs) < n:   # the echo went quiet: do not wait out its selects
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(m)
        os.close(s)
    _CAL.append(int(_median(legs) or 0))
    return _CAL[0]


def timing_for(url):
    """ptys and network streams deliver a written frame at once; a UART paces it."""
    if url.startswith(("loop://", "socket://", "rfc2217://", "/dev/pts/", "spy://")):
        return "arrival"
    return "wire"


def load_records(path, fmt=None, reads=()):
    """(header, records) from a JSON Lines trace or a capture without timing: dotted hex
    (>>> / <<< lines), '0x..' bytes or a plain hex dump (fmt: protocols.trace.FORMATS, None =
    detect). reads [(slave, fc, addr, qty)] pair responses-only dumps by shape."""
    if fmt is None:
        with open(path, errors="replace") as f:
            head = [f.readline() for _ in range(64)]
        fmt = trace.detect(head)
        if fmt is None:
            raise trace.TraceError("line 1: not a trace, a dotted-hex capture (>>> / <<<), "
                                   "0x.. bytes or a hex dump (try --format)")
    if fmt == "jsonl":
        header, recs = trace.read(path)
        return header, list(recs)
    # captures without timing: t_us is synthesised at 19200 baud (the Seplos default)
    header = {"trace": 1, "source": os.path.basename(path), "baud": 19200, "format": fmt}
    if fmt == "dotted":
        return header, list(trace.import_dotted(path, baud=19200))
    return header, trace.import_hex(path, fmt, baud=19200, reads=reads)
