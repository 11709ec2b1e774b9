# The PCS: what the loop wants (setpoint, run) against what the PCS acknowledged
# (actuator.py), written again until acknowledged; run readback; the mismatch event when
# its measured power does not follow; the bounded stop at the loop's exit. A site without
# a PCS has one with enabled False: every method then does nothing.
from edgefw import clock
from edgefw.actuator import Actuator

STOP_MS = 2000               # bounded time the loop's exit spends stopping the PCS (real ms)


class PcsCtl:
    def __init__(self, dev, buses, safety, err, event, refresh_ms, period_ms):
        self.enabled = dev is not None
        self.dev = dev
        self.safety = safety    # tripped: 0 W and stop, as urgent writes
        self.buses = buses
        self.err = err
        self.event = event      # event(kind, data): to the cloud
        self.refresh = refresh_ms
        self.period = period_ms
        self.act = Actuator(dev, buses.master(dev.bus) if dev is not None else None,
                            ("p_set_w", "run"), err, "p_set_w")
        self.ack = self.act.ack
        self.want_w = None      # what the loop wants (None: nothing yet / mode off)
        self.want_run = None
        self.mismatch_t = None  # site ms since the PCS p_w disagrees with the command
        self.mismatches = 0

    def want(self, w, run):
        self.want_w = w
        self.want_run = run

    def pending(self):
        p = self.act.pend
        return p["p_set_w"] is not None or p["run"] is not None

    def acked(self):
        """The acknowledged setpoint, 0 while the acknowledged run is 0 (None: unknown)."""
        a = self.ack["p_set_w"]
        if a is not None and self.ack["run"] == 0:
            a = 0
        return a

    def stop(self):
        """0 W then stop, ahead of everything else on the PCS bus (a new trip, the loop's
        exit); service() re-sends both every bus turn until the PCS acknowledges."""
        if not self.enabled:
            return
        # urgent writes jump the queue: queue stop first, then 0 W (0 W goes out first)
        self.act.write("run", 0, True)
        self.act.write("p_set_w", 0, True)

    def service(self, now):
        """Every pass: write what the PCS has not acknowledged (run also when its readback
        differs); the setpoint also every refresh_ms (PCS revert timers). Tripped: 0 W
        and stop. run = 1 only once the magnitude is acknowledged."""
        if not self.enabled:
            return
        # the site's trip, or (several PCS) this one's own: pcs fault, its packs' alarm
        tripped = self.safety.stopped(self.dev.name)
        if tripped:
            ww, wr = 0, 0
        else:
            ww, wr = self.want_w, self.want_run
        if ww is None and wr is None:
            return
        act = self.act
        if act.paced():
            return
        ack = self.ack
        pend = act.pend
        # readback: a PCS that shows another run state than it acknowledged (power
        # cycle, local panel) gets the command again (p_set_w is not compared: a PCS may
        # clamp or round it; it is rewritten every refresh_ms anyway)
        act.lost("run")
        todo_w = ww is not None and pend["p_set_w"] is None and (
            ack["p_set_w"] != ww
            or clock.ticks_diff(now, act.ack_t["p_set_w"]) >= self.refresh)
        todo_r = wr is not None and pend["run"] is None and ack["run"] != wr
        if todo_r and wr == 1 and (todo_w or pend["p_set_w"] is not None
                                   or ack["p_set_w"] != ww):
            todo_r = False  # never run on a magnitude the PCS has not confirmed
        if tripped:
            if todo_r:
                act.write("run", wr, True)
            if todo_w:
                act.write("p_set_w", ww, True)
        else:
            if todo_w:
                act.write("p_set_w", ww)
            if todo_r:
                act.write("run", wr)

    def check(self, now, site):
        """Event when the PCS's measured p_w does not follow the acknowledged command for
        3 control periods (a PCS in local mode, a lost revert timer)."""
        a = self.ack["p_set_w"]
        v, _, q = site.point(self.dev, "p_w", now)
        chg = self.act.chg_t
        if a is None or v is None or q != 0 or self.ack["run"] is None or (
                chg is not None and clock.ticks_diff(now, chg) < 3 * self.period):
            self.mismatch_t = None  # unknown, or still settling after a change
            return
        want = a if self.ack["run"] == 1 else 0
        tol = 200 + abs(want) // 10
        if abs(v - want) <= tol:
            self.mismatch_t = None
            return
        if self.mismatch_t is None:
            self.mismatch_t = now
        elif self.mismatch_t is not False and \
                clock.ticks_diff(now, self.mismatch_t) >= 3 * self.period:
            self.mismatch_t = False  # reported; again only after it followed once
            self.mismatches += 1
            self.err("pcs mismatch: p_w %d W, commanded %d W" % (v, want))
            self.event("pcs_mismatch", {"p_w": v, "sp_w": want})

    def shutdown(self):
        """The loop is ending: 0 W and stop, waiting at most STOP_MS for the PCS to
        acknowledge (nothing supervises it afterwards). The caller skips it in mode off."""
        if not self.enabled:
            return
        self.want_w = 0
        self.want_run = 0
        m = self.act.master
        if m is None:
            return
        t0 = clock.ticks_ms()
        if not self.buses.reopen_now(self.dev.bus, t0):
            return
        self.stop()
        while clock.ticks_diff(clock.ticks_ms(), t0) < STOP_MS:
            if self.ack["p_set_w"] == 0 and self.ack["run"] == 0:
                return
            try:
                w = m.poll()
                self.service(clock.site_ms())
            except Exception as e:
                self.err("pcs stop: %r" % (e,))
                return
            clock.sleep_ms(1 if w else 0)
