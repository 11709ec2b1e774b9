"""Simulated Modbus RTU slave devices answering real RTU frames from the shared register
maps (regmap.encode_point for what they show, regmap.decode_write for what they are told).

    dev = SimDevice("sunspec_pcs", slave=1, role="pcs", site=sim)   # values from a SimSite
    bus = SimBus(fd_or_socket, [dev, ...], baud=9600, pace=False)    # answers on a stream
    bus.start(); ...; bus.stop()

A SimBus serves one byte stream: a pty master fd, a serial port (pyserial) or a connected
TCP socket. With pace=True it holds each answer for the wire time of the request and
of the answer at `baud` (a real 9600-baud line), else it answers at once.

Fault injection per device: dev.mode = "ok" | "silent" | "crc" | "exception"
(dev.exc_code, default 4), dev.latency_ms. dev.log keeps (real t, request bytes,
response bytes or None) and dev.writes keeps (real t, {point: value}) of applied writes.
"""
import collections
import fcntl
import os
import select
import struct
import termios
import threading
import time

from protocols import modbus_rtu as rtu
from protocols import regmap


class SimDevice:
    def __init__(self, map_name, slave, role, site=None, values=None, name=None):
        self.map = regmap.load(map_name) if isinstance(map_name, str) else map_name
        self.slave = slave
        self.role = role
        self.name = name or role
        self.site = site
        self.values = dict(values or {})   # overrides / values without a site
        self.mode = "ok"
        self.exc_code = 4
        self.latency_ms = 0
        self.tables = {"coil": {}, "discrete": {}, "input": {}, "holding": {}}
        self.log = collections.deque(maxlen=4000)
        self.writes = collections.deque(maxlen=4000)
        self.requests = 0
        self.lock = threading.Lock()

    def refresh(self):
        """Re-encode every point from the site (and overrides) into the register tables."""
        vals = {}
        if self.site is not None:
            if getattr(self.site, "named", False):  # several packs / PCS (simmulti.py)
                vals.update(self.site.points(self.role, self.name))
            else:
                vals.update(self.site.points(self.role))
        vals.update(self.values)
        pts = self.map.points
        # scale factors first: a point with a live "sf" is encoded with the one shown now
        for name in sorted(pts, key=lambda n: "sf" in pts[n]):
            if name not in vals:
                continue
            try:
                img = self.tables[pts[name]["table"]] if "sf" in pts[name] else None
                table, addr, words = regmap.encode_point(self.map, name, vals[name], img)
            except regmap.RegMapError:
                continue  # value out of what the register can show: keep the old one
            t = self.tables[table]
            pick = pts[name].get("pick")
            if pick:
                # bitfields that pick their bits from a shared block (alarm / protect
                # interleaved) own only those bits: leave the others' bits alone
                for i in pick:
                    t[addr + i] = words[i]
                continue
            for i in range(len(words)):
                t[addr + i] = words[i]
        return vals

    def shown(self):
        """What the device currently shows, decoded back through the map (ints)."""
        self.refresh()
        out = {}
        for name, p in self.map.points.items():
            t = self.tables[p["table"]]
            fc = regmap.READ_FC[p["table"]]
            n = p["n"]
            data = [t.get(p["addr"] + i, 0) for i in range(n)]
            v = regmap.decode(self.map, fc, p["addr"], data).get(name)
            if v is not None:
                out[name] = v
        return out

    def handle(self, req):
        """Answer a decoded request: response bytes, or None for silence."""
        with self.lock:
            self.requests += 1
            if self.mode == "silent":
                return None
            if self.mode == "exception":
                return rtu.encode_exception(self.slave, req.fc, self.exc_code)
            try:
                rsp = self._answer(req)
            except regmap.RegMapError as e:
                rsp = rtu.encode_exception(self.slave, req.fc, getattr(e, "code", 3) or 3)
            except rtu.ModbusError:
                rsp = rtu.encode_exception(self.slave, req.fc, 3)
            if self.mode == "crc":
                rsp = rsp[:-2] + bytes((rsp[-2] ^ 0xA5, rsp[-1]))
            return rsp

    def _answer(self, req):
        fc = req.fc
        if fc in (1, 2, 3, 4):
            self.refresh()
            t = self.tables[regmap.FC_TABLE[fc]]
            vals = []
            for a in range(req.addr, req.addr + req.qty):
                if a not in t and not self._owned(regmap.FC_TABLE[fc], a):
                    return rtu.encode_exception(self.slave, fc, 2)
                vals.append(t.get(a, 0))
            return rtu.encode_response(self.slave, fc, vals)
        if fc in (5, 6, 15, 16):
            table = regmap.FC_TABLE[fc]
            changes = regmap.decode_write(self.map, fc, req.addr, req.values,
                                          self.tables[table])
            t = self.tables[table]
            for i in range(len(req.values)):
                t[req.addr + i] = req.values[i]
            self.writes.append((time.monotonic(), dict(changes)))
            if self.site is None:
                self.values.update(changes)
            elif changes:
                if getattr(self.site, "named", False):
                    self.site.write(self.role, changes, self.name)
                else:
                    self.site.write(self.role, changes)
            if fc == 5:
                return rtu.encode_response(self.slave, 5, addr=req.addr, qty=req.values[0])
            if fc == 6:
                return rtu.encode_response(self.slave, 6, addr=req.addr, qty=req.values[0])
            return rtu.encode_response(self.slave, fc, addr=req.addr, qty=req.qty)
        return rtu.encode_exception(self.slave, fc, 1)

    def _owned(self, table, a):
        # registers between points inside a map's read plan read as 0, like real devices;
        # addresses beyond every point are illegal
        pts = self.map.points
        idx = self.map._idx.get(table) or ()  # the table's point names in address order
        if not idx:
            return False
        lo = pts[idx[0]]["addr"]
        hi = max(pts[pn]["addr"] + pts[pn]["n"] for pn in idx)
        return lo <= a < hi


class _Stream:
    """read(n) non-blocking-ish / write(b) over a fd, a socket or a pyserial port."""

    def __init__(self, s):
        self.s = s
        if isinstance(s, int):
            os.set_blocking(s, False)
            self.fileno = lambda: s
            self.read = self._fd_read
            self.write = lambda b: os.write(s, b)
        elif hasattr(s, "recv"):
            s.setblocking(False)
            self.fileno = s.fileno
            self.read = self._sock_read
            self.write = s.sendall
        else:  # pyserial
            s.timeout = 0
            self.fileno = s.fileno
            self.read = lambda n: s.read(n)
            self.write = s.write

    def _fd_read(self, n):
        try:
            return os.read(self.s, n)
        except BlockingIOError:
            return b""
        except OSError:  # EIO: nobody has the pty slave open right now
            return None

    def _sock_read(self, n):
        try:
            d = self.s.recv(n)
        except BlockingIOError:
            return b""
        return d if d else None


def _inq(fd):
    """Bytes waiting to be read on a tty fd (None: not a tty, cannot tell)."""
    if fd is None:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return None


class SimBus:
    """One RS-485 line with simulated slaves on it, served by a thread (start()), or in
    lockstep by the virtual gateway's clock (take(), flush(), due(): times are the
    clock's seconds; answers wait for their latency in that time, and flush() returns
    once the other end of the pty (`peer`, its slave fd) can read what was written)."""

    def __init__(self, stream, devices, baud=9600, pace=False, name="bus", peer=None):
        self.st = _Stream(stream)
        self.peer = peer
        self.stepped = False  # True: lockstep (no thread)
        self.out = []        # lockstep: [(due s, response bytes)] in due order
        self.got = 0         # lockstep: bytes read from the line / reported sent on it
        self.want = 0
        self.stalls = 0      # lockstep: bounded waits that ran out (bytes that never came)
        self.devs = {}
        for d in devices:
            self.devs[d.slave] = d
        self.baud = baud
        self.pace = pace
        self.name = name
        self.char_s = 11.0 / baud
        self.t35 = rtu.silence_us(baud) / 1e6
        self.buf = bytearray()
        self.last_rx = 0.0
        self.junk = 0
        self.frames = 0
        self.trace = collections.deque(maxlen=4000)  # (t, "req"/"rsp", bytes)
        self._stop = threading.Event()
        self.th = None

    def start(self):
        self.th = threading.Thread(target=self._run, name="simbus-" + self.name, daemon=True)
        self.th.start()
        return self

    def stop(self):
        self._stop.set()
        if self.th is not None:
            self.th.join(2)

    def _run(self):
        fd = self.st.fileno()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.05)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            if not r:
                if self.buf and now - self.last_rx > max(self.t35, 0.02):
                    self.junk += 1  # an incomplete frame followed by silence: drop it
                    self.buf = bytearray()
                continue
            d = self.st.read(512)
            if d is None:
                time.sleep(0.05)  # the other side is not open (pty slave closed)
                continue
            if not d:
                continue
            self._rx(d, now)

    def _rx(self, d, now):
        if self.buf and now - self.last_rx > max(self.t35, 0.02):
            self.junk += 1
            self.buf = bytearray()
        self.buf.extend(d)
        self.last_rx = now
        self._frames(now)

    # ---- lockstep ---------------------------------------------------------------------

    def resync(self):
        """A new gateway process: bytes the old one did not report are not waited for."""
        self.want = self.got

    def take(self, n, now, wait_s=5.0):
        """The gateway reports n more bytes sent: read until they are here (bounded) and
        answer the requests among them at time `now`."""
        self.want += n
        end = time.monotonic() + wait_s
        fd = self.st.fileno()
        while True:
            d = self.st.read(4096)
            if d:
                self.got += len(d)
                self._rx(d, now)
                continue
            if self.got >= self.want:
                break
            if time.monotonic() > end:
                self.stalls += 1
                break
            select.select([fd], [], [], 0.01)
        if self.buf and now - self.last_rx > max(self.t35, 0.02):
            self.junk += 1  # an incomplete frame followed by silence: drop it
            self.buf = bytearray()

    def due(self):
        return self.out[0][0] if self.out else None

    def flush(self, now, wait_s=2.0):
        """Write the answers due by `now`; return once the gateway can read them."""
        while self.out and self.out[0][0] <= now:
            rsp = self.out.pop(0)[1]
            q0 = _inq(self.peer)
            self.trace.append((time.monotonic(), "rsp", rsp))
            try:
                self.st.write(rsp)
            except OSError:
                continue
            end = time.monotonic() + wait_s
            while q0 is not None and _inq(self.peer) < q0 + len(rsp):
                if time.monotonic() > end:
                    self.stalls += 1
                    break
                time.sleep(0.0002)

    def _frames(self, now=None):
        while self.buf:
            try:
                n = rtu.request_len(self.buf)
            except rtu.ModbusError:
                self.junk += 1
                self.buf = bytearray()
                return
            if n == 0 or len(self.buf) < n:
                return
            frame = bytes(self.buf[:n])
            del self.buf[:n]
            if not rtu.check_crc(frame):
                self.junk += 1
                self.buf = bytearray()
                return
            self.frames += 1
            t = time.monotonic()
            self.trace.append((t, "req", frame))
            try:
                req = rtu.decode_request(frame)
            except rtu.ModbusError:
                self.junk += 1
                continue
            dev = self.devs.get(req.slave)
            if dev is None:
                continue  # nobody at that address: silence, as on a real line
            rsp = dev.handle(req)
            dev.log.append((t, frame, rsp))
            if rsp is None:
                continue
            wait = dev.latency_ms / 1000.0
            if self.pace:
                # the request was on the wire len*11 bits before we saw its last byte only
                # on a real line; here it arrived at once, so spend that time now, plus the
                # answer's own wire time and the t3.5 silence before it
                wait += (len(frame) + len(rsp)) * self.char_s + self.t35
            if self.stepped:
                self.out.append((now + wait, rsp))  # lockstep: flush() writes it when due
                self.out.sort(key=lambda x: x[0])
                continue
            if wait > 0:
                time.sleep(wait)
            self.trace.append((time.monotonic(), "rsp", rsp))
            try:
                self.st.write(rsp)
            except OSError:
                pass
