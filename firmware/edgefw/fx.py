# Integer fixed-point helpers shared by dispatch, planner, energy and device code.
# Python's // and % floor toward -inf and >> is an arithmetic (floor) shift, while C on
# the MCU and most manuals truncate toward zero; these helpers make the rounding explicit
# so results do not depend on the sign of an operand. All take and return ints.


def div_trunc(a, b):
    """a / b rounded toward zero (C semantics)."""
    if b == 0:
        raise ZeroDivisionError("div_trunc by zero")
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def div_round(a, b):
    """a / b rounded to nearest, halves away from zero."""
    if b == 0:
        raise ZeroDivisionError("div_round by zero")
    q = (2 * abs(a) + abs(b)) // (2 * abs(b))
    return q if (a < 0) == (b < 0) else -q


def divmod_trunc(a, b):
    """(q, r) with q = div_trunc(a, b) and a == q * b + r (r has the sign of a)."""
    q = div_trunc(a, b)
    return q, a - q * b


def mul_div(a, m, d):
    """a * m / d rounded to nearest; the caller keeps |a * m| below 2**30."""
    return div_round(a * m, d)


def clamp(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def sign(v):
    return (v > 0) - (v < 0)


def mdiv(a, m, d):
    """floor(a * m / d) for 0 <= a < 2**30, 0 <= m <= 10000, 1 <= d <= 10000, without an
    intermediate above 2**30: a = ah * 2**15 + al. The result must itself fit."""
    ah = a >> 15            # a >= 0 here, so the shift is a plain floor
    al = a - (ah << 15)
    x = ah * m
    q1 = x // d
    r1 = x - q1 * d
    return (q1 << 15) + (r1 * 32768 + al * m) // d


def frac(e, bat):
    """floor(e * 10000 / bat) for 0 <= e <= bat <= 10**7, in two x100 steps (< 2**30)."""
    a = e * 100
    q = a // bat
    r = a - q * bat
    return q * 100 + (r * 100) // bat
