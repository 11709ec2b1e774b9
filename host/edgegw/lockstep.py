"""The virtual gateway's site clock in lockstep with the firmware: site time advances only
when the firmware has finished its pass and the simulated devices have answered what it
sent, so a slow or busy host changes how long a run takes, never its result.

The firmware side is hal_unix._Lockstep (two FIFOs, PATH.req and PATH.grant). Time here is
"virtual real" microseconds `us` (the firmware's ticks_us); the site runs `speed` x that.
After a pass the firmware writes "w MS PORT=N ...": the controller reads the N bytes it
sent on each bus, lets the SimBus answer them, advances time by what the firmware may
wait (at least QUANTUM_US, at most to the next answer due), steps the physics at fixed
PHYS_US boundaries, writes the answers that are due (and waits until the firmware's end
of each pty can read them), then replies with the new time.

Pacing: time never runs ahead of real time x 1 (so the site runs `speed` x real time on a
quiet host); behind it, the controller does not sleep, and a debt beyond MAX_DEBT_S is
dropped (a busy host runs the site slower, with the same answers).
Until the firmware's hello (at most boot_s) time stands still. Free running: after "d"
(its loop ended), while its process is gone, or without a hello, the site advances by
PHYS_US every PHYS_US of real time, as a real site does beside a stopped controller.
hold(): while held, time stands still and the firmware keeps making passes (MQTT, REPL),
so a test can act at one exact site time.
"""
import os
import select
import threading
import time

QUANTUM_US = 1000
PHYS_US = 10000
MAX_DEBT_S = 0.1


class Lockstep:
    def __init__(self, sim, speed, buses, path, alive, boot_s=30.0):
        self.sim = sim
        self.speed = speed
        self.buses = buses          # {port as the firmware names it: SimBus}
        self.path = path
        self.alive = alive          # () -> the firmware process is running
        self.boot_s = boot_s
        self.us = 0
        self.phys_us = 0
        self.held = 0
        self.stop_us = None         # run_to(): hold once time gets there
        self.t0 = sim.t             # site time at us = 0
        self.attached = False
        self.steps = 0
        self._booting = time.monotonic()
        self._base = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._buf = b""
        self._reboot = None
        for b in buses.values():
            b.stepped = True
        for ext in (".req", ".grant"):
            p = path + ext
            if os.path.lexists(p):
                os.remove(p)
            os.mkfifo(p)
        # read-write opens never block and never see EOF: the firmware may come and go
        self.req = os.open(path + ".req", os.O_RDWR | os.O_NONBLOCK)
        self.grant = os.open(path + ".grant", os.O_RDWR)
        self.th = threading.Thread(target=self._run, name="lockstep", daemon=True)

    def start(self):
        self.th.start()
        return self

    def close(self):
        """Stop the thread and close the FIFOs; a second call does nothing (a gateway
        closed by restart() and again at teardown closed the numbers twice, by then
        another gateway's FIFOs: its lockstep thread died of EBADF)."""
        self._stop.set()
        if self.th.is_alive():
            self.th.join(10)
        if self.th.is_alive() or self.req < 0:
            # still inside a step on a busy host: closing its FIFOs now would let it write
            # to a closed (or reused) descriptor; they go with the process instead
            return
        fds = (self.req, self.grant)
        self.req = self.grant = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def reboot(self):
        """The firmware process ended and a new one starts: forget the old one's messages
        and wait for the new one's hello (time stands still while it boots). Call before
        starting the new process; returns once the controller has done it."""
        done = threading.Event()
        self._reboot = done
        while self.th.is_alive() and not done.wait(0.05) and not self._stop.is_set():
            pass

    def _rebooted(self):
        self._drain(self.req)
        self._drain(self.grant)
        self._buf = b""
        self.attached = False
        self._booting = time.monotonic()
        done, self._reboot = self._reboot, None
        done.set()

    # ---- the loop -------------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            if self._reboot is not None:
                self._rebooted()
            msg = self._next(PHYS_US / 1e6)
            if msg is None:
                if self.attached and not self.alive():
                    self.attached = False  # a power cut: the site goes on without it
                if not self.attached and (self._booting is None
                                          or time.monotonic() - self._booting > self.boot_s):
                    self._booting = None
                    self._free()
                continue
            if not msg:
                continue
            if msg[0] == "h":
                for b in self.buses.values():
                    b.resync()
                self._attach()
                self._reply()
            elif msg[0] == "d":
                self.attached = False
            elif msg[0] == "w":
                self._attach()
                try:
                    self._step(msg)
                except OSError:
                    # a bus pty closed under the step: the gateway is being torn down
                    # (or its process was cut); anything else is a real error
                    if not (self._stop.is_set() or not self.alive()):
                        raise
                    continue
                self._reply()

    def _attach(self):
        if not self.attached:
            self.attached = True
            self._booting = None
            self._base = time.monotonic() - self.us / 1e6

    def _step(self, msg):
        parts = msg.split()
        wait_ms = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        now = self.us / 1e6
        for kv in parts[2:]:
            port, _, n = kv.rpartition("=")
            b = self.buses.get(port)
            if b is not None and n.isdigit():
                b.take(int(n), now)
        self.steps += 1
        room = self._room()
        if room <= 0:
            time.sleep(max(0.001, min(wait_ms, 20) / 1000.0))
            for b in self.buses.values():
                b.flush(now)
            return
        adv = max(QUANTUM_US, wait_ms * 1000)
        for b in self.buses.values():
            d = b.due()
            if d is not None:
                adv = min(adv, max(QUANTUM_US, int(round((d - now) * 1e6))))
        self._advance(min(adv, room))
        now = self.us / 1e6
        for b in self.buses.values():
            b.flush(now)

    def _advance(self, adv):
        self.us += adv
        ahead = self._base + self.us / 1e6 - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -MAX_DEBT_S:
            self._base -= ahead + MAX_DEBT_S
        dt = PHYS_US * self.speed / 1e6
        while self.phys_us + PHYS_US <= self.us:
            self.phys_us += PHYS_US
            self.sim.step(dt)

    def _free(self):
        """No firmware in step: serve the lines as they are and let the site run."""
        now = self.us / 1e6
        for b in self.buses.values():
            b.take(0, now, 0)
            b.flush(now)
        room = self._room()
        if room > 0:
            self._advance(min(PHYS_US, room))
        else:
            time.sleep(PHYS_US / 1e6)

    def _room(self):
        """us time may advance now (0: held)."""
        if self.held:
            return 0
        if self.stop_us is not None:
            return max(0, self.stop_us - self.us)
        return 1 << 62

    def _reply(self):
        try:
            os.write(self.grant, b"%d\n" % self.us)
        except OSError:
            if not self._stop.is_set():
                raise
            # close() gave up waiting for this thread on a busy host and shut the FIFOs

    # ---- the FIFOs --------------------------------------------------------------------

    def _next(self, timeout):
        """The next message line from the firmware, or None after timeout s."""
        while b"\n" not in self._buf:
            try:
                r, _, _ = select.select([self.req], [], [], timeout)
            except (OSError, ValueError):
                return None
            if not r:
                return None
            try:
                d = os.read(self.req, 4096)
            except (BlockingIOError, OSError):
                d = b""
            if not d:
                return None
            self._buf += d
        ln, _, self._buf = self._buf.partition(b"\n")
        return ln.decode("ascii", "replace")

    @staticmethod
    def _drain(fd):
        blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        os.set_blocking(fd, blocking)

    # ---- for tests --------------------------------------------------------------------

    def settle(self, passes=20, timeout=5.0):
        """Wait (held) until the firmware made `passes` more passes: all it can do at this
        instant is done (bounded)."""
        n = self.steps + passes
        end = time.monotonic() + timeout
        while self.steps < n and time.monotonic() < end and not self._stop.is_set():
            time.sleep(0.005)

    def run_to(self, site_t, timeout):
        """Let time run until exactly site time site_t (now if it is past) and hold it
        there until resume(); returns the site time held. TimeoutError when time stood
        still for `timeout` real s on the way (a slow host only takes longer)."""
        us = int(round((site_t - self.t0) * 1e6 / self.speed))
        self.stop_us = max(us, self.us)
        last, moved = self.us, time.monotonic()
        while self.us < self.stop_us:
            if self.us != last:
                last, moved = self.us, time.monotonic()
            elif time.monotonic() - moved > timeout or self._stop.is_set():
                raise TimeoutError("site time %.1f not reached (stopped at %.1f)"
                                   % (site_t, self.site_t()))
            time.sleep(0.002)
        self.settle(5, timeout)  # what the firmware does at this instant is done
        return self.site_t()

    def resume(self):
        self.stop_us = None

    def site_t(self):
        """Site time of the clock (the physics follows in PHYS_US steps)."""
        return self.t0 + self.us * self.speed / 1e6

    def hold_more(self, n):
        with self._lock:
            self.held += n

    def hold(self):
        """Context manager: site time stands still inside it (the firmware still runs)."""
        ls = self

        class _Hold:
            def __enter__(self):
                ls.hold_more(1)
                return ls

            def __exit__(self, *a):
                ls.hold_more(-1)
        return _Hold()
