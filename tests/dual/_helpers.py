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
    """Deterministic xorshift32 (13, 17, 5) so every runtime sees the same 'random' frames.
    The 32-bit state is kept as two 16-bit halves and next() returns its low 30 bits, so
    no value or intermediate ever leaves the 31-bit small ints of a 32-bit MicroPython
    (heap_lock tests draw from it); & 0xFFFF and & 0xFF of next() are the plain xorshift32
    bits, as before."""

    def __init__(self, seed=12345):
        self.h = (seed >> 16) & 0xFFFF
        self.l = seed & 0xFFFF
        if not (self.h | self.l):
            self.l = 1

    def next(self):
        h = self.h
        l = self.l
        # s ^= s << 13 (mod 2**32)
        h ^= ((h << 13) | (l >> 3)) & 0xFFFF
        l ^= (l << 13) & 0xFFFF
        # s ^= s >> 17
        l ^= h >> 1
        # s ^= s << 5 (mod 2**32)
        h ^= ((h << 5) | (l >> 11)) & 0xFFFF
        l ^= (l << 5) & 0xFFFF
        self.h = h
        self.l = l
        return ((h & 0x3FFF) << 16) | l

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.next() & 0xFF for _ in range(n))
