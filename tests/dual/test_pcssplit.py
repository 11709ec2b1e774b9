# pcssplit: the site setpoint over several PCS by rating and each one's limit; the sum
# is exact, remainders go to the first open PCS, a clamped PCS's rest to the others.
from edgefw.pcssplit import Split
from _helpers import Rand


def test_by_rating():
    s = Split([10000, 5000])
    assert s.split(3000, [10000, 5000]) == 3000
    assert s.out == [2000, 1000]
    assert s.split(-3000, [10000, 5000]) == -3000
    assert s.out == [-2000, -1000]


def test_equal_without_ratings_and_remainder_order():
    s = Split([None, None, None])
    assert s.split(1000, [5000, 5000, 5000]) == 1000
    assert s.out == [334, 333, 333]


def test_clamped_rest_goes_to_the_others():
    s = Split([10000, 10000])
    assert s.split(8000, [1000, 10000]) == 8000
    assert s.out == [1000, 7000]


def test_stopped_pcs_gets_nothing_and_total_capped():
    s = Split([6000, 4000])
    assert s.split(5000, [0, 4000]) == 4000
    assert s.out == [0, 4000]
    assert s.split(100, [0, 0]) == 0
    assert s.out == [0, 0]
    assert s.split(0, [6000, 4000]) == 0 and s.out == [0, 0]


def test_random_sums_exact_and_within_limits():
    r = Rand(77)
    for _ in range(300):
        n = 1 + r.below(4)
        rat = [1 + r.below(2000000) for _ in range(n)]
        s = Split(rat)
        lim = [r.below(2000000) if r.below(4) else 0 for _ in range(n)]
        sp = r.below(8000000) - 4000000
        got = s.split(sp, lim)
        cap = 0
        for x in lim:
            cap += x
        want = sp if abs(sp) <= cap else (cap if sp > 0 else -cap)
        assert got == want
        tot = 0
        for i in range(n):
            assert abs(s.out[i]) <= lim[i]
            assert s.out[i] == 0 or (s.out[i] < 0) == (sp < 0)
            tot += s.out[i]
        assert tot == want
