# The clock's lockstep hook (the virtual gateway's hal_unix hands in the host's time): every
# clock follows the injected ticks, the loop's wait becomes the host's step; without it the
# wait is a poll of the buses, as on a board. Same on the three runtimes.
from edgefw import clock


class _Host:
    """Stands in for the virtual gateway's host: time moves only when step() is called."""

    def __init__(self):
        self.us = 0
        self.steps = []

    def ticks_ms(self):
        return clock.ticks_add(0, self.us // 1000)

    def ticks_us(self):
        return clock.ticks_add(0, self.us)

    def step(self, ms):
        self.steps.append(ms)
        if ms is not None:
            self.us += (ms if ms > 0 else 1) * 1000


class _Poller:
    def __init__(self):
        self.polled = []

    def poll(self, ms):
        self.polled.append(ms)


def _saved():
    return (clock._ticks_ms, clock._ticks_us, clock.ticks_ms, clock.ticks_us,
            clock.sleep_ms, clock._step)


def _restore(s):
    clock._ticks_ms, clock._ticks_us, clock.ticks_ms, clock.ticks_us, clock.sleep_ms, \
        clock._step = s
    clock.configure(1)


def test_lockstep_clocks_follow_the_host():
    saved = _saved()
    h = _Host()
    try:
        clock.lockstep(h.ticks_ms, h.ticks_us, h.step)
        clock.configure(10, 1782000000)
        m0, u0, s0 = clock.ticks_ms(), clock.ticks_us(), clock.site_ms()
        p = _Poller()
        clock.idle(p, 50)       # the loop's wait: one step of the host, no poll
        assert p.polled == [] and h.steps == [50]
        assert clock.ticks_diff(clock.ticks_ms(), m0) == 50
        assert clock.ticks_diff(clock.ticks_us(), u0) == 50000
        assert clock.ticks_diff(clock.site_ms(), s0) == 500
        clock.idle(p, 0)        # a pass that may not wait still moves time (the host's rule)
        clock.sleep_ms(150)     # sleeps are steps too (the PCS stop at the loop's end)
        assert h.steps == [50, 0, 150]
        assert clock.ticks_diff(clock.site_ms(), s0) == 2010
        assert clock.time() == 1782000002
        for _ in range(3):
            clock.time()        # reading the clock never moves it
        assert clock.ticks_diff(clock.site_ms(), s0) == 2010
        clock.idle(p, None)     # the loop ended: the host is told, nothing polled
        assert h.steps[-1] is None and p.polled == []
    finally:
        _restore(saved)


def test_idle_without_lockstep_polls_the_buses():
    assert clock._step is None
    p = _Poller()
    clock.idle(p, 0)
    clock.idle(p, 7)
    clock.idle(p, None)
    assert p.polled == [7]
