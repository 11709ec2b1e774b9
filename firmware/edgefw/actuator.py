# Acknowledged writes to one device (the PCS, the PV inverter): per point what was
# acknowledged (None = unknown: never written, or the last write failed), when, and the
# write in flight. A point write may need several frames (its map); it is acknowledged
# only when every frame was answered without an exception. Each device has its own
# tables, so two devices may have points of the same name.
from edgefw import clock


class _PW:
    """One point write in flight; cb gets each frame's outcome from the bus master."""
    __slots__ = ("act", "point", "value", "left", "bad")

    def __init__(self, act, point, value, n):
        self.act = act
        self.point = point
        self.value = value
        self.left = n
        self.bad = False

    def cb(self, ok):
        if self.bad:
            return
        self.left -= 1
        if not ok:
            self.bad = True
            self.act.done(self, False)
        elif self.left <= 0:
            self.act.done(self, True)


class Actuator:
    def __init__(self, dev, master, points, err, track=None):
        """dev on master (None: no bus of that name, nothing is written); points: the
        point names written; track: the point whose acknowledged changes are timed
        (chg_t, prev; the PCS setpoint, for the bound). err(text): the error log."""
        self.dev = dev
        self.master = master
        self.err = err
        self.track = track
        self.ack = {}
        self.ack_t = {}
        self.pend = {}
        for p in points:
            self.ack[p] = None
            self.ack_t[p] = 0
            self.pend[p] = None
        self.wr_fail = 0
        self.fails = 0          # failed writes in a row
        self.retry = 0          # real ms ticks before which a dead device is not retried
        self.fail_cyc = None    # bus cycle count at the last failed write (retry pacing)
        self.fail_t = 0
        self.chg_t = None       # site ms when the tracked point's acknowledged value changed
        self.prev = None        # its acknowledged value before that change

    def write(self, point, value, urgent=False):
        """Queue one point write; done() gets its outcome. False: not queued."""
        m = self.master
        if m is None:
            return False
        d = self.dev
        try:
            ops = d.writes(point, value)
        except ValueError as e:
            self.err("%s %s=%d: %s" % (d.role, point, value, e))
            return False
        pw = _PW(self, point, value, len(ops))
        self.pend[point] = pw
        if urgent:
            ops = list(ops)
            ops.reverse()  # each urgent write goes to the front: keep the map's order
        for op in ops:
            m.write(d, op[0], op[1], op[2], pw.cb, urgent)
        return True

    def done(self, pw, ok):
        p = pw.point
        if ok:
            if p == self.track and self.ack[p] != pw.value:
                self.chg_t = clock.site_ms()
                self.prev = self.ack[p]
            self.ack[p] = pw.value
            self.ack_t[p] = clock.site_ms()
            self.fails = 0
            self.fail_cyc = None
        else:
            self.wr_fail += 1
            self.ack[p] = None  # unknown now: written again
            self.fails += 1
            # the next bus turn: after a read finished on the bus (or 250 ms), so a
            # refusing device never starves the other reads on its bus
            m = self.master
            self.fail_cyc = m.cycles if m is not None else 0
            self.fail_t = clock.ticks_ms()
            if self.fails >= 3:
                self.retry = clock.ticks_add(clock.ticks_ms(), 500)
        if self.pend[p] is pw:
            self.pend[p] = None

    def paced(self):
        """True while a retry must wait: a device that does not answer costs a timeout
        per try (3 failures in a row and stale: 500 ms apart); after a failure, until
        the bus finished a read (or 250 ms)."""
        now = clock.ticks_ms()
        if self.fails >= 3 and self.dev.stale() and clock.ticks_diff(now, self.retry) < 0:
            return True
        m = self.master
        return self.fail_cyc is not None and m is not None and m.cycles == self.fail_cyc \
            and clock.ticks_diff(now, self.fail_t) < 250

    def lost(self, p):
        """The device's readback of p differs from the acknowledged value, read after it
        was acknowledged, nothing in flight (power cycle, local panel): unknown again."""
        a = self.ack[p]
        d = self.dev
        t = d.t.get(p)
        if a is not None and self.pend[p] is None and t is not None \
                and d.values.get(p) != a and clock.ticks_diff(t, self.ack_t[p]) > 0:
            self.ack[p] = None
