# Helpers shared by the dual-runtime tests (CPython pytest and MicroPython mpytest).
import sys

MICROPYTHON = sys.implementation.name == "micropython"


# MicroPython functions take no attributes: the runner looks names up in this set
CPYTHON_ONLY = set()


def cpython_only(fn):
    """Mark a test that needs CPython (pytest runs it; mpytest skips it)."""
    CPYTHON_ONLY.add(fn.__name__)
    return fn


def raises(exc, fn, *args, **kw):
    """Assert that fn(*args) raises exc; returns the exception (no pytest on MicroPython)."""
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s not raised by %r%r" % (exc.__name__, fn, args))


class Rand:
    """Deterministic xorshift32 so both runtimes see the same 'random' frames."""

    def __init__(self, seed=12345):
        self.s = seed & 0xFFFFFFFF or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.next() & 0xFF for _ in range(n))
