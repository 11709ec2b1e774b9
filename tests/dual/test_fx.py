# Fixed-point helpers: C-style rounding whatever the signs, same on both runtimes.
from edgefw import fx
from _helpers import Rand, raises


def test_div_trunc_signs():
    assert fx.div_trunc(7, 2) == 3
    assert fx.div_trunc(-7, 2) == -3
    assert fx.div_trunc(7, -2) == -3
    assert fx.div_trunc(-7, -2) == 3
    assert fx.div_trunc(0, -5) == 0


def test_div_round_halves_away_from_zero():
    assert fx.div_round(5, 2) == 3
    assert fx.div_round(-5, 2) == -3
    assert fx.div_round(4, 3) == 1
    assert fx.div_round(-4, 3) == -1
    assert fx.div_round(-5, -2) == 3


def test_divmod_trunc_identity_random():
    r = Rand(7)
    for _ in range(2000):
        a = r.next() % 2000001 - 1000000
        b = r.next() % 2001 - 1000
        if b == 0:
            continue
        q, m = fx.divmod_trunc(a, b)
        assert q * b + m == a
        assert abs(m) < abs(b)
        assert m == 0 or (m < 0) == (a < 0)


def test_mul_div_and_clamp():
    assert fx.mul_div(-1000, 95, 100) == -950
    assert fx.mul_div(3, 1, 2) == 2
    assert fx.clamp(5, 0, 3) == 3
    assert fx.clamp(-5, 0, 3) == 0
    assert fx.sign(-9) == -1 and fx.sign(0) == 0
    assert raises(ZeroDivisionError, fx.div_trunc, 1, 0)
