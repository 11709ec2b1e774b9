# Every bus of the site: its master (busmaster.py), opened through hal.open_bus (tests
# hand in their own), watched by one select.poll. A bus that raises is closed, its
# devices go stale, and it is reopened with backoff (1 s doubling to BACKOFF_MAX); one
# that cannot be opened at boot is retried the same way. The other buses never notice.
import select

from edgefw import busmaster, clock

BACKOFF_MAX = 60000     # a failed bus is reopened at most this far apart (real ms)
_FIRST = 1000           # the first reopen after a failure (real ms)


class Buses:
    def __init__(self, bus_cfgs, stale_polls, open_bus, err):
        self.open_bus = open_bus
        self.err = err
        self.masters = {}
        self.bus_cfg = {}
        self.down = {}          # bus name -> [real ms ticks of the next reopen, backoff ms]
        self.poller = select.poll()
        self.watched = {}       # bus name -> stream registered with the poller
        for b in bus_cfgs:
            n = b["name"]
            self.bus_cfg[n] = b
            self.masters[n] = busmaster.BusMaster(
                None, n, b["baud"], b["timeout_ms"], b["retries"], stale_polls)
            try:
                bus = open_bus(b)
            except Exception as e:
                err("bus %s: cannot open %s: %s (retrying)" % (n, b["port"], e))
                self.down[n] = [clock.ticks_add(clock.ticks_ms(), _FIRST), _FIRST]
                continue
            self._attach(n, bus)

    def add(self, devs):
        for d in devs:
            m = self.masters.get(d.bus)
            if m is not None:
                m.add(d)

    def master(self, name):
        return self.masters.get(name)

    def _attach(self, name, bus):
        self.masters[name].set_bus(bus)
        try:
            self.poller.register(bus.stream, select.POLLIN)
            self.watched[name] = bus.stream
        except (TypeError, ValueError, OSError, AttributeError):
            pass  # a stream poll cannot watch: the loop still polls it on its timer

    def fail(self, name, e):
        """A bus raised: its devices go stale, its writes fail, it is closed and
        reopened with backoff. Reported once per outage; the other buses go on."""
        m = self.masters[name]
        m.fail()
        bus = m.bus
        m.bus = None
        st = self.watched.pop(name, None)
        if st is not None:
            # only what was registered: MicroPython 1.29's poll.unregister of an object
            # it never took crashes the interpreter (segfault)
            try:
                self.poller.unregister(st)
            except (KeyError, ValueError, OSError):
                pass  # already gone with its stream: nothing left to watch
        why = "%r" % (e,)
        if bus is not None:
            try:
                bus.close()
            except Exception as ce:  # a broken stream may raise anything: say so once
                why += " (close: %r)" % (ce,)
        if name not in self.down:
            self.err("bus %s: %s; reopening with backoff" % (name, why))
            self.down[name] = [clock.ticks_add(clock.ticks_ms(), _FIRST), _FIRST]

    def reopen(self, name):
        """Try a down bus once its backoff has passed; True when it is open again."""
        d = self.down[name]
        now = clock.ticks_ms()
        if clock.ticks_diff(now, d[0]) < 0:
            return False
        try:
            bus = self.open_bus(self.bus_cfg[name])
        except Exception:  # still gone: the outage was reported once, back off
            b = d[1] * 2
            d[1] = b if b < BACKOFF_MAX else BACKOFF_MAX
            d[0] = clock.ticks_add(now, d[1])
            return False
        del self.down[name]
        self._attach(name, bus)
        return True

    def reopen_now(self, name, t):
        """The loop's exit: a down bus is tried at once (ticks t). True when open."""
        d = self.down.get(name)
        if d is None:
            return True
        d[0] = t
        return self.reopen(name)

    def poll(self, wait):
        """Advance every bus, each on its own; returns the smaller of wait and the ms
        until a master needs polling again."""
        for name in self.masters:
            m = self.masters[name]
            if name in self.down and not self.reopen(name):
                continue
            try:
                w = m.poll()
            except Exception as e:
                self.fail(name, e)
                w = 50
            if w < wait:
                wait = w
        return wait

    def writes_waiting(self):
        """A write was queued after its master was polled (send it now)."""
        for name in self.masters:
            if name not in self.down and self.masters[name].idle_with_writes():
                return True
        return False

    def healthy(self):
        """Every bus open and every device answering and fresh (the config trial)."""
        for m in self.masters.values():
            if m.bus is None:
                return False
            for st in m.stats().values():
                if not st["ok"] or st["stale"]:
                    return False
        return True

    def stats(self):
        buses = {}
        for name in self.masters:
            m = self.masters[name]
            b = m.stats()
            b["_junk"] = m.junk
            b["_pending_writes"] = m.pending()
            b["_errors"] = m.errors
            b["_down"] = name in self.down
            buses[name] = b
        return buses

    def close(self, err):
        for m in self.masters.values():
            try:
                m.close()
            except Exception as e:  # the loop is ending: close the others anyway
                err("bus %s: close: %r" % (m.name, e))
