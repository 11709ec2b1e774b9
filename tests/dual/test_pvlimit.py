# PV limit logic (firmware/edgefw/pvlimit.py): runs under CPython (pytest) and
# MicroPython (tools/mpytest.py).
from edgefw import pvlimit
from edgefw.pvlimit import PvLimit, pct_cpct, tol_w

RATING = 8000


def test_tolerance_is_one_percent_at_least_50w():
    assert tol_w(8000) == 80
    assert tol_w(3000) == 50
    assert tol_w(0) == 50
    assert tol_w(100000) == 1000


def test_percent_rounds_down_and_stays_small():
    assert pct_cpct(4000, 8000) == 5000
    assert pct_cpct(1, 8000) == 1          # 1.25 -> 1
    assert pct_cpct(7999, 8000) == 9998    # 9998.75 -> 9998
    assert pct_cpct(0, 8000) == 0
    assert pct_cpct(-5, 8000) == 0
    assert pct_cpct(9000, 8000) == 10000
    assert pct_cpct(100, 0) == 0
    # never above what was asked, exact floor, on both runtimes up to 10 MW
    for rating in (3000, 8000, 99999, 1000000, 10000000):
        for lim in (1, 7, rating // 3, rating // 2 + 1, rating - 1):
            c = pct_cpct(lim, rating)
            assert c * rating <= lim * 10000 < (c + 1) * rating, (lim, rating, c)
            assert lim * 100 < 2 ** 30


def test_limit_follows_curtail_and_releases_at_zero():
    p = PvLimit()
    assert p.available(6000, RATING) == 6000
    assert p.limit(2500, RATING) == 3500
    assert p.lim_w == 3500
    # the inverter follows: production at the limit, the estimate stays 6000
    assert p.available(3500, RATING) == 6000 and p.limited
    # more curtail (beyond tol): the limit moves down
    assert p.limit(3000, RATING) == 3000
    assert p.available(3000, RATING) == 6000
    # curtail 0: let go in steps of a tenth of the rating per step (the PCS ramps up to
    # the charge that takes the surplus meanwhile), released once past the estimate
    assert [p.limit(0, RATING) for _ in range(4)] == [3800, 4600, 5400, None]
    assert p.lim_w is None and not p.limited
    assert p.available(5800, RATING) == 5800


def test_no_write_churn_on_steady_input():
    p = PvLimit()
    p.available(6000, RATING)
    first = p.limit(2500, RATING)
    seen = set()
    # curtail and the measurement wobble inside the tolerance: the limit does not move
    for i in range(50):
        est = p.available(first - 30 + (i % 7) * 10, RATING)
        assert est == 6000
        seen.add(p.limit(2500 + (i % 5) * 15 - 30, RATING))
    assert seen == {first}


def test_estimate_frozen_while_limited_measured_when_not():
    p = PvLimit()
    assert p.available(5000, RATING) == 5000
    p.limit(1000, RATING)                      # L = 4000
    # at the limit (within tol): PV behind unknown, the kept estimate stands
    assert p.available(3950, RATING) == 5000 and p.limited
    assert p.available(4000, RATING) == 5000
    # clouds: well below the limit, so not limited; the measurement is what there is
    assert p.available(2500, RATING) == 2500 and not p.limited
    assert p.limit(0, RATING) is None
    assert p.available(2600, RATING) == 2600


def test_raised_limit_waits_for_the_inverter():
    p = PvLimit()
    p.available(6000, RATING)
    assert p.limit(3000, RATING) == 3000
    p.available(3000, RATING)
    # the load grew: less curtail, the limit is raised; the inverter lags behind it
    assert p.limit(2000, RATING) == 4000
    for _ in range(pvlimit.SETTLE_STEPS):
        assert p.available(3000, RATING) == 6000  # lag, not less PV
        assert p.limit(2000, RATING) == 4000
    # still below the raised limit after the settle steps: really less PV than that
    assert p.available(3000, RATING) == 3000 and not p.limited


def _site(avail, load, charge_max, margin, steps, pl):
    """A closed loop: dispatcher-like curtail on the estimate, an inverter that applies
    the previous step's limit. Returns the grid trace (+ import)."""
    lim = None
    grid = []
    for _ in range(steps):
        prod = avail if lim is None or lim > avail else lim
        est = pl.available(prod, RATING)
        # zero export: charge what the battery takes, curtail the rest (dispatch rule 2)
        sur = est - load + margin
        ch = sur if sur < charge_max else charge_max
        if ch < 0:
            ch = 0
        cur = sur - ch if sur > ch else 0
        lim = pl.limit(cur, RATING)
        grid.append(load + ch - prod)
    return grid, lim


def test_closed_loop_settles_at_the_margin_without_runaway():
    pl = PvLimit()
    grid, lim = _site(7000, 2000, 500, 100, 30, pl)
    # the fixed point: the limit is what load and battery take, less the margin
    assert lim == 2000 + 500 - 100
    for g in grid[3:]:
        assert g >= 100 - tol_w(RATING), grid
        assert g < 2 ** 30
    # battery full: charge 0, the limit drops to the load
    grid, lim = _site(7000, 2000, 0, 100, 30, pl)
    assert lim == 1900
    assert min(grid[3:]) >= 100 - tol_w(RATING)
    # no surplus: released
    grid, lim = _site(1500, 2000, 0, 100, 10, pl)
    assert lim is None


class _Dev:
    """What Site reads from a device: role, values, read times, stale()."""

    def __init__(self, name, role, p_w):
        from edgefw import clock
        self.name = name
        self.role = role
        self.period_ms = 1000
        self.values = {"p_w": p_w}
        self.t = {"p_w": clock.site_ms()}

    def stale(self):
        return False


def test_pv_inverter_is_the_pv_without_a_pv_meter():
    from edgefw.site import Site
    from edgefw import config
    assert "pv_inverter" in config.ROLES and "pv_inverter" in config.SINGLE_ROLES
    inv = _Dev("inv", "pv_inverter", 2200)
    s = Site([_Dev("grid", "grid_meter", 100), inv, _Dev("it", "load_meter", 2300)])
    assert s.update()["pv_w"] == 2200 and s.ok("pv_w")
    # with a PV meter, the meter is the PV (the inverter is only limited)
    s = Site([_Dev("grid", "grid_meter", 100), inv, _Dev("pv", "pv_meter", 3000),
              _Dev("it", "load_meter", 2300)])
    assert s.update()["pv_w"] == 3000
