# A grid precharge episode as a planned schedule (issue 15, docs/dispatch.md "The grid
# precharge"): once the plan wants grid energy before a shortfall, the battery charges at
# one power the plan schedules (the smallest steady charge that holds the plan level
# through the horizon), ramped up, held across load bursts and re-planned every plan;
# cut only as far as the import ceiling (the level, or the peak already set) needs, and
# rules 1-4 still bound it (safety, BMS, SOC window, the cap). It used to fill the grid
# up to a level, so every load burst stopped it or swung it into a discharge and back
# (70 starts in one episode on the family bench). Integer, nothing allocated.
from edgefw.fx import div_trunc, mdiv
from edgefw.planner import usable

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WMAX = const(10000000)      # |W| clamp (10 MW)
RAMP_S = const(600)         # the charge ramps from 0 to the PCS rating in this long


def _min(a, b):
    return a if a < b else b


def _max(a, b):
    return a if a > b else b


class Precharge:
    def __init__(self, p):
        self.on = False          # an episode is running
        self.sched_w = 0         # the charge the plan schedules (W at the battery)
        self.cmd_w = 0           # the charge commanded: ramps up to sched_w
        self.ceil_w = 0          # grid import the charge stays under (W)
        self.margin_w = p["export_margin_w"]
        self.f0 = 0              # the present block's forecast net load at the last plan
        self.burst_w = 0         # how far the load has run above that lately (W)
        # the profile with that headroom on the blocks the charge runs in (the walk the
        # schedule is planned on; preallocated: plan() allocates nothing)
        self.prof = [0] * _max(1, div_trunc(p["horizon_s"], 900))
        # the ramp: added to the charge every plan (plan_s apart, or sooner after news)
        ps = p["plan_s"] if p["plan_s"] < RAMP_S else RAMP_S
        self.ramp_w = _max(_max(10, div_trunc(p["pcs_w"], 200)), mdiv(p["pcs_w"], ps, RAMP_S))

    def _power(self, pl, T, n, e0, emax):
        # the smallest steady charge (W, within the room under T of every block) with
        # which the plan holds T over the horizon; the charge limit if none does
        cmax = pl.bat.charge_max_w
        lo = 0
        hi = cmax
        pl.gmax_w = cmax
        if pl.feasible(T, n, e0, emax, n) >= 0:
            while hi - lo > pl.tol_w:
                mid = lo + ((hi - lo) >> 1)       # hi > lo: non-negative shift
                pl.gmax_w = mid
                if pl.feasible(T, n, e0, emax, n) >= 0:
                    hi = mid
                else:
                    lo = mid
        pl.gmax_w = WMAX
        return hi

    def _headroom(self, f, T, n):
        # the forecast with the bursts on every block below the level (not above it; PV
        # surplus blocks as they are)
        h = self.burst_w
        q = self.prof
        for k in range(n):
            x = f[k]
            if 0 <= x < T:
                x = _min(x + h, T)
            q[k] = x

    def _level(self, pl, lo, hi, n, e0, emax):
        # the lowest level in [lo, hi] the walk holds with grid charge; hi if none
        if pl.feasible(hi, n, e0, emax, n) >= 0:
            hi = pl.bisect(lo, hi, n, e0, emax, n)
        return hi

    def plan(self, pl, soc, floor, peak_w):
        """After pl.plan(): start, re-plan or end the episode; pl.grid_charge follows it.
        soc, floor: cpct; peak_w: the period's peak so far (W)."""
        b = pl.bat
        T = pl.level_w
        n = pl.n_blocks
        e0 = usable(b, soc, floor)
        emax = usable(b, b.soc_max, floor)
        # a running episode ends once the plan holds without the grid with one block of
        # the present charge to spare (less, and the next forecast wiggle restarts it)
        keep = _max(pl.tol_w, self.cmd_w)
        if self.on and not pl.grid_charge:
            self.on = pl.feasible(T, n, e0 - keep, emax, 0) < 0
        elif pl.grid_charge:
            self.on = True
        pl.grid_charge = self.on
        pl.pre_on = self.on
        self.burst_w -= self.burst_w >> 4           # >= 0: plain shift
        self.f0 = pl.walk[0]
        if not self.on:
            self.sched_w = 0
            self.cmd_w = 0
            return
        top = _max(T, _min(peak_w, pl.cap_w))
        if self.burst_w > 0 and top > T:
            # room for the bursts seen: plan the charge under the level less them, the
            # level up to the peak already set (a burst then only cuts the charge)
            self._headroom(pl.walk, T, n)
            pl.walk = self.prof
            T = self._level(pl, T, top, n, e0 - keep, emax)
        c = self._power(pl, T, n, e0 - keep, emax)
        if c >= b.charge_max_w:
            # no room for the spare, or the level kept by its hysteresis (deadband) is
            # just below the plan's: the need alone, at the plan's
            c = self._power(pl, T + pl.deadband_w, n, e0, emax)
        pl.walk = pl.profile.net_w
        if self.f0 >= T and n > 1 and pl.walk[1] >= T and \
                (pl.feasible(T, n, e0, emax, 0) < 0 or pl.spill == 0):
            # the shortfall starts inside the present block and lasts past it: the
            # block's mean has no room under the level though the minutes before the
            # shortfall have, so the walk cannot schedule them; with no PV spill ahead
            # (that would refill the battery anyway) they charge all the room the
            # ceiling leaves (want())
            c = b.charge_max_w
        self.sched_w = c
        # ramp up, down at once (less import is safe)
        self.cmd_w = _min(self.cmd_w + self.ramp_w, self.sched_w)
        # the ceiling: the level or the peak already set this period (importing up to it
        # costs nothing more; never above the cap): a burst cuts the charge instead of
        # stopping it, and only a load above that is shaved while the episode runs
        self.ceil_w = _max(T, _min(peak_w, pl.cap_w))

    def want(self, net):
        """The setpoint (W, + = discharge) the episode wants at net load net."""
        L = self.ceil_w
        x = net - self.f0
        if x > self.burst_w:
            self.burst_w = x if x < WMAX else WMAX
        if net > L:
            return net - L          # a burst above the ceiling: shave it
        w = -self.cmd_w
        if net + self.cmd_w > L:
            w = net - L
        if net - self.margin_w < w:
            w = net - self.margin_w     # PV surplus beyond the charge goes in too
        return w
