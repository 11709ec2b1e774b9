# Modbus RTU master for one RS-485 bus: a non-blocking state machine the main loop
# drives with poll(). One transaction at a time; queued writes go ahead of reads;
# each device's planned reads run once per period (site time); bus timing (response
# timeout, t3.5 silence) is real time. A device that misses `stale_polls` polls in a
# row is stale and only probed with backoff, so a silent device never stalls the others.
#
# Device interface (devices.Device provides it; tests may pass any object):
#   dev.name, dev.slave, dev.period_ms, dev.reads [(fc, addr, qty)],
#   dev.on_read(fc, addr, values, now_ms), dev.on_poll(ok, now_ms) (optional)
from protocols import modbus_rtu as rtu
from edgefw import clock

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_IDLE = const(0)
_WAIT = const(1)
BACKOFF_MAX_MS = const(300000)  # stale devices are probed at most this far apart (site ms)
_RXBUF = const(64)


class Station:
    """Per-device poll schedule (due time, lateness, stale probing) and statistics on one
    bus; BusMaster runs the transactions."""

    def __init__(self, dev, now):
        self.dev = dev
        self.reqs = [rtu.Request(dev.slave, r[0], r[1], r[2]) for r in dev.reads]
        self.frames = [q.encode() for q in self.reqs]  # encoded once: no per-poll garbage
        self.due = now
        self.idx = -1          # read in progress in this poll, -1 = between polls
        self.answered = False  # any read of the current poll answered
        self.requests = 0
        self.ok = 0
        self.timeouts = 0
        self.crc = 0
        self.bad = 0           # answers that framed but could not be used (decode raised)
        self.exceptions = 0
        self.last_exc = 0
        self.polls = 0
        self.missed = 0        # consecutive polls without any answer
        self.last_ok = None    # site ms ticks of the last good response
        self.stale = False
        self.late = 0          # polls started more than a period after they were due

    def start_poll(self, now):
        if clock.ticks_diff(now, self.due) > self.dev.period_ms:
            self.late += 1
        self.idx = 0
        self.answered = False

    def end_poll(self, now, stale_polls):
        """The poll is over: the next one is due a period on, or (stale: `stale_polls`
        missed in a row) a probe after max(period, 2 s) x n, at most BACKOFF_MAX_MS."""
        self.polls += 1
        self.idx = -1
        if self.answered:
            self.missed = 0
            self.stale = False
            self.due = clock.ticks_add(self.due, self.dev.period_ms)
            if clock.ticks_diff(now, self.due) > 0:
                self.due = now  # behind: poll again now, but never in bursts to catch up
        else:
            self.missed += 1
            if self.missed >= stale_polls:
                self.stale = True
            if self.stale:
                p = self.dev.period_ms
                if p < 2000:
                    p = 2000
                k = self.missed - stale_polls + 1
                b = p * k if k < BACKOFF_MAX_MS // p else BACKOFF_MAX_MS
                self.due = clock.ticks_add(now, b)
            else:
                self.due = clock.ticks_add(self.due, self.dev.period_ms)
                if clock.ticks_diff(now, self.due) > 0:
                    self.due = now
        self.answered = False

    def bus_failed(self, now, stale_polls):
        """The bus raised: stale from now on, probed again at once on the new bus."""
        self.idx = -1
        self.answered = False
        if self.missed < stale_polls:
            self.missed = stale_polls
        self.stale = True
        self.due = now

    def stats(self, now):
        return {"requests": self.requests, "ok": self.ok, "timeouts": self.timeouts,
                "crc": self.crc, "bad": self.bad, "exceptions": self.exceptions,
                "last_exc": self.last_exc, "polls": self.polls, "missed": self.missed,
                "stale": self.stale, "late": self.late,
                "age_ms": None if self.last_ok is None else clock.ticks_diff(now, self.last_ok)}


class _Write:
    __slots__ = ("st", "req", "frame", "cb", "tries")

    def __init__(self, st, req, cb):
        self.st = st
        self.req = req
        self.frame = req.encode()
        self.cb = cb
        self.tries = 0


class WriteQueue:
    """Writes waiting for the bus, oldest first (urgent ones jump the queue); a newer
    write to the same register of the same slave replaces a queued one (setpoints)."""

    def __init__(self):
        self.q = []

    def __len__(self):
        return len(self.q)

    def put(self, w, urgent):
        q = self.q
        r = w.req
        for i in range(len(q)):
            o = q[i].req
            if o.slave == r.slave and o.fc == r.fc and o.addr == r.addr:
                q.pop(i)
                break
        if urgent:
            q.insert(0, w)
        else:
            q.append(w)

    def head(self):
        return self.q[0] if self.q else None

    def done(self, w):
        if self.q and self.q[0] is w:
            self.q.pop(0)

    def fail_all(self, cur):
        """Empty the queue (cur: a write in flight, or None); callbacks get False."""
        ws = self.q
        self.q = []
        if cur is not None and cur not in ws:
            ws.insert(0, cur)
        for w in ws:
            if w.cb is not None:
                w.cb(False)


class Stations:
    """The stations of one bus in round-robin order: lookup by device name, the next one
    to poll and how long until one is due. Ints and existing objects only: picking the
    next poll allocates nothing."""

    def __init__(self):
        self.st = []
        self.by_name = {}
        self.rr = 0

    def add(self, dev, now):
        s = Station(dev, now)
        self.st.append(s)
        self.by_name[dev.name] = s
        dev.station = s
        return s

    def next_due(self, now):
        """The station whose poll is most overdue, from the round-robin position on (which
        then moves past it); None when none is due."""
        sts = self.st
        n = len(sts)
        best = -1
        bestd = 0
        for k in range(n):
            i = (self.rr + k) % n
            s = sts[i]
            if not s.reqs:
                continue
            d = clock.ticks_diff(now, s.due)
            if d >= 0 and (best < 0 or d > bestd):
                best = i
                bestd = d
        if best < 0:
            return None
        self.rr = (best + 1) % n
        return sts[best]

    def sleep_ms(self, now):
        """Real ms until the first station is due, at most 50 (also when none reads)."""
        m = None
        for s in self.st:
            if s.reqs:
                d = clock.ticks_diff(s.due, now)
                if m is None or d < m:
                    m = d
        if m is None:
            return 50
        m = m // clock.speed()
        return m if m < 50 else 50

    def bus_failed(self, now, stale_polls):
        for s in self.st:
            s.bus_failed(now, stale_polls)

    def stats(self, now):
        d = {}
        for s in self.st:
            d[s.dev.name] = s.stats(now)
        return d


# what a frame that came while waiting is (classify); otherwise it is the decoded answer
JUNK = const(0)       # not the answer: someone else's frame, noise, a fragment
FRAME_ERR = const(1)  # the asked device, but a CRC error or a malformed answer


def classify(frame, flags, req):
    """The answer to req (rtu.Response; .exc set for a Modbus exception), or JUNK or
    FRAME_ERR. Ints, not a tuple: a frame costs no more than its decoded answer."""
    if flags & rtu.F_SHORT:
        return JUNK
    if flags & rtu.F_CRC:
        return FRAME_ERR if frame and frame[0] == req.slave else JUNK
    try:
        return rtu.decode_response(frame, req)
    except rtu.ModbusError:
        # the right device, malformed answer: a frame error; someone else's frame: junk
        # (keep waiting for ours)
        return FRAME_ERR if frame[0] == req.slave and (frame[1] & 0x7F) == req.fc else JUNK


class BusMaster:
    def __init__(self, bus, name="bus", baud=9600, timeout_ms=200, retries=1, stale_polls=3):
        self.bus = bus
        self.name = name
        self.baud = baud
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.stale_polls = stale_polls
        self.t35 = rtu.silence_us(baud)
        self.char_us = rtu.char_us(baud)
        self.fr = rtu.Framer(baud)
        self.rx = bytearray(_RXBUF)
        self.stations = Stations()
        self.st = self.stations.st  # stations in round-robin order (read by memprobe)
        self.wq = WriteQueue()
        self.state = _IDLE
        self.cur = None         # station (read) or _Write in flight
        self.req = None
        self.frame = None
        self.tries = 0
        self.retry = False      # resend the frame in flight after the silence
        self.hold = None        # station whose poll a write interrupted
        self.t0_us = 0
        self.deadline = 0
        self.quiet_us = clock.ticks_us()  # end of the last bus activity
        self.junk = 0           # frames from nobody we asked (late answers, noise)
        self.cycles = 0
        self.errors = 0         # times the bus itself raised (see fail())

    # ---- configuration ------------------------------------------------------

    def add(self, dev):
        return self.stations.add(dev, clock.site_ms())

    def write(self, dev, fc, addr, values, cb=None, urgent=False):
        """Queue a write (FC 5/6/15/16) to dev; it goes out before any further read.
        A newer write to the same register replaces a queued one (setpoints)."""
        st = self.stations.by_name[dev.name]
        w = _Write(st, rtu.Request(dev.slave, fc, addr, len(values), list(values)), cb)
        self.wq.put(w, urgent)
        return w

    def idle_with_writes(self):
        """True when writes wait and nothing is in flight (the loop must not sleep)."""
        return self.state == _IDLE and len(self.wq) > 0

    def pending(self):
        return len(self.wq) + (1 if isinstance(self.cur, _Write) else 0)

    # ---- state machine ------------------------------------------------------

    def poll(self):
        """Advance the bus: read what arrived, handle timeouts, start the next
        transaction. Never blocks. Returns ms until it next needs a call (0 = soon)."""
        if self.state == _WAIT:
            self._receive()
            if self.state == _WAIT:
                left = clock.ticks_diff(self.deadline, clock.ticks_ms())
                if left > 0:
                    return left
                self._attempt_failed(False)
        if self.state == _IDLE:
            return self._start_next()
        return 0

    def _receive(self):
        fr = self.fr
        got = []
        while True:
            n = self.bus.readinto(self.rx)
            if not n:
                break
            now = clock.ticks_us()
            self.quiet_us = now
            got.extend(fr.feed(memoryview(self.rx)[:n], clock.ticks_diff(now, self.t0_us)))
        if not got:
            got = fr.poll(clock.ticks_diff(clock.ticks_us(), self.t0_us))
        for fb in got:
            if self.state != _WAIT:
                self.junk += 1
                continue
            try:
                self._frame(fb[0], fb[1])
            except Exception:
                # no answer of any shape may take the bus down (fail() would stale every
                # device on it): it is this device's bad answer, counted for it alone
                self._bad_answer()

    def _bad_answer(self):
        cur = self.cur
        if cur is None or self.state != _WAIT:
            self.junk += 1
            return
        (cur if isinstance(cur, Station) else cur.st).bad += 1
        self._attempt_failed(True)

    def _frame(self, frame, flags):
        r = classify(frame, flags, self.req)
        if r == JUNK:
            self.junk += 1
            return
        cur = self.cur
        st = cur if isinstance(cur, Station) else cur.st
        if r == FRAME_ERR:
            st.crc += 1
            self._attempt_failed(True)
            return
        now = clock.site_ms()
        if r.exc:
            st.exceptions += 1
            st.last_exc = r.exc
            st.last_ok = now  # it answered: alive, but refused this request
            self._done(True, False, now)
            return
        if isinstance(cur, Station):
            q = self.req
            cur.dev.on_read(q.fc, q.addr, r.values, now)  # raises: _bad_answer, not ok
        st.ok += 1
        st.last_ok = now
        self._done(True, True, now)

    def _send(self, frame, req):
        self.req = req
        self.frame = frame
        fr = self.fr
        fr.flush()
        # drop whatever arrived between transactions (late answers, echoes)
        while self.bus.readinto(self.rx):
            self.junk += 1
        fr.expect(req.response_len())
        self.t0_us = clock.ticks_us()
        self.bus.write(frame)
        now = clock.ticks_us()
        self.quiet_us = now
        self.state = _WAIT
        self.tries += 1
        # the answer needs its own transmission time on top of the device's latency
        wire_ms = (req.response_len() * self.char_us + 999) // 1000
        self.deadline = clock.ticks_add(clock.ticks_ms(), self.timeout_ms + wire_ms)
        cur = self.cur
        (cur if isinstance(cur, Station) else cur.st).requests += 1

    def _attempt_failed(self, crc):
        cur = self.cur
        st = cur if isinstance(cur, Station) else cur.st
        if not crc:
            st.timeouts += 1
        retries = 0 if st.stale else self.retries
        self.state = _IDLE
        if self.tries <= retries:
            self.retry = True
            return
        self._done(False, False, clock.site_ms())

    def _done(self, answered, good, now):
        cur = self.cur
        self.state = _IDLE
        self.retry = False
        if not isinstance(cur, Station):
            self.wq.done(cur)
            self.cur = None
            if cur.cb is not None:
                cur.cb(good)
            return
        if answered:
            cur.answered = True
        elif not cur.answered:
            # the first read went unanswered: the device is silent, skip the rest
            self._end_poll(cur, now)
            return
        cur.idx += 1
        if cur.idx >= len(cur.reqs):
            self._end_poll(cur, now)

    def _end_poll(self, st, now):
        self.cur = None
        st.end_poll(now, self.stale_polls)
        self.cycles += 1
        f = getattr(st.dev, "on_poll", None)
        if f is not None:
            f(st.stale is False and st.missed == 0, now)

    def _start_next(self):
        gap = self.t35 - clock.ticks_diff(clock.ticks_us(), self.quiet_us)
        if gap > 0:
            return 1 if gap > 1000 else 0
        if self.retry:
            self.retry = False
            self._send(self.frame, self.req)
            return 0
        # writes go first, even between the reads of one device's poll
        w = self.wq.head()
        if w is not None:
            if isinstance(self.cur, Station):
                self.hold = self.cur
            self.cur = w
            self.tries = 0
            self._send(w.frame, w.req)
            return 0
        if self.hold is not None:
            self.cur = self.hold
            self.hold = None
        cur = self.cur
        if cur is not None:
            self.tries = 0
            self._send(cur.frames[cur.idx], cur.reqs[cur.idx])
            return 0
        return self._next_poll()

    def _next_poll(self):
        now = clock.site_ms()
        best = self.stations.next_due(now)
        if best is None:
            return self.stations.sleep_ms(now)  # nothing due: sleep until the first is
        best.start_poll(now)
        self.cur = best
        self.tries = 0
        self._send(best.frames[0], best.reqs[0])
        return 0

    # ---- a bus that raised (TCP gateway gone, adapter unplugged) ----------------

    def fail(self):
        """The bus raised: drop the transaction in flight, fail every queued write (its
        callback gets False) and mark the devices stale (their data ages from now on).
        The owner closes the bus and later hands a new one to set_bus()."""
        self.errors += 1
        cur = self.cur
        self.cur = None
        self.hold = None
        self.retry = False
        self.state = _IDLE
        self.stations.bus_failed(clock.site_ms(), self.stale_polls)
        self.wq.fail_all(cur if isinstance(cur, _Write) else None)

    def set_bus(self, bus):
        """A reopened bus: start clean (framer flushed, first poll now)."""
        self.bus = bus
        self.fr.flush()
        self.state = _IDLE
        self.quiet_us = clock.ticks_us()

    def stats(self):
        return self.stations.stats(clock.site_ms())

    def close(self):
        if self.bus is not None:
            self.bus.close()
