# The firmware clock's site time in small ints (issue 19): the control loop computes with
# clock.rel() (s since 2025-01-01), which must not allocate on a 32-bit MicroPython where
# unix time (> 2**30) is a heap long int. Runs on CPython and both MicroPythons.
from _helpers import MICROPYTHON
from edgefw import clock

T_2026 = 1767225600          # 2026-01-01 00:00 UTC (unix s)


def _rel_many(n):
    # what the control loop does each step: read the site time, difference it
    t0 = clock.rel()
    d = 0
    for i in range(n):
        d = clock.rel() - t0
    return d


def test_rel_is_unix_time_since_2025_and_a_whole_number_of_days():
    clock.configure(1, T_2026)
    try:
        r = clock.rel()
        t = clock.time()
        assert 0 <= t - T_2026 <= 2
        assert t - r == clock.EPOCH == 1735689600
        assert clock.EPOCH % 86400 == 0            # time of day unchanged
        assert 31536000 <= r <= 31536002           # 365 days after 2025-01-01
        assert clock.valid() and clock.valid(t) and not clock.valid(clock.VALID_FROM - 1)
    finally:
        clock.configure()


def test_clock_before_2024_is_not_valid():
    clock.configure(1, 946684800 + 3600)           # an ESP32 RTC after a power cut
    try:
        assert clock.rel() < -(1 << 29) and not clock.valid()
    finally:
        clock.configure()


def test_rel_does_not_allocate():
    clock.configure(1, T_2026)
    try:
        _rel_many(3)
        if MICROPYTHON:
            import micropython
            micropython.heap_lock()
            try:
                d = _rel_many(200)
            finally:
                micropython.heap_unlock()
        else:
            d = _rel_many(200)
        assert 0 <= d <= 2
    finally:
        clock.configure()


def test_fast_site_time_keeps_rel_and_time_in_step():
    clock.configure(60, T_2026)
    try:
        a = clock.rel()
        b = clock.time()
        assert 0 <= b - clock.EPOCH - a <= 120     # 60 x real time, a moment apart
        assert clock.speed() == 60
    finally:
        clock.configure()
