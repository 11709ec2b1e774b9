# The dispatch plan: the import level T the available energy can hold over the horizon
# (docs/dispatch.md, rule 5), the grid precharge it may need and the effective import cap
# (rule 3's ratchet). Integer fixed point, no I/O, nothing allocated in plan(): the
# profiles and the feasibility walk's figures are preallocated state of the Planner.
# The horizon is cut into 15 min blocks; energies are in W x block (1 Wh = 4 Wblk) so the
# inner loop is adds and compares only.
from edgefw.fx import div_trunc, clamp, mdiv, frac

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WMAX = const(10000000)      # |W| clamp for every power input (10 MW)
MAX_FC = const(288)         # forecast points kept (24 h at 5 min)
BLOCK_S = const(900)        # plan block (s)
KCI_FAST = const(8)         # plans a day that learn the PV index fast (gain 1/4, then 1/32)
# forecast times are kept as offsets from the step time at which they arrived, saturated
# at +-8.5 years: every time difference in the plan stays a small int
TSAT = const(268435456)     # 2**28 s


def _min(a, b):
    return a if a < b else b


def _max(a, b):
    return a if a > b else b


def energy_wh(bat_wh, cpct):
    """Wh held between 0 and cpct (>= 0) of a bat_wh battery."""
    if cpct <= 0:
        return 0
    return mdiv(bat_wh, cpct, 10000)


def usable(b, soc, floor):
    """W x block a Battery b delivers from soc down to floor (cpct; 0 at or below it)."""
    return mdiv(energy_wh(b.wh, soc - floor), b.eta_d, 1000) * 4


class Battery:
    """The battery and PCS params as ints (validated dict, see dispatch.validate_params)."""

    def __init__(self, p):
        self.wh = p["battery_wh"]
        self.soc_min = p["soc_min_cpct"]
        self.soc_max = p["soc_max_cpct"]
        self.hyst = p["hyst_cpct"]
        self.charge_max_w = _min(p["charge_max_w"], p["pcs_w"])
        self.discharge_max_w = _min(p["discharge_max_w"], p["pcs_w"])
        self.eta_c = p["eta_c_milli"]
        self.eta_d = p["eta_d_milli"]


class LoadForecast:
    """The cloud's compute-load (IT) forecast: load_w[k] for [t0 + k*step_s, ...) until exp,
    and optionally PV (pv_w) and aux (aux_w) on the same steps (n_pv, n_aux points; their
    lists are made with the first forecast that has them: RAM only where used);
    times are offsets from base_s (the step time it arrived at)."""

    def __init__(self):
        self.n = 0
        self.load_w = [0] * MAX_FC
        self.n_pv = 0
        self.pv_w = None
        self.n_aux = 0
        self.aux_w = None
        self.t0 = 0
        self.step_s = BLOCK_S
        self.exp = 0
        self.base_s = 0

    def set(self, t0, step_s, load_w, exp, base_s, pv_w=None, aux_w=None):
        for name, lw in (("load_w", load_w), ("pv_w", pv_w), ("aux_w", aux_w)):
            for i in range(_min(len(lw), MAX_FC) if lw is not None else 0):
                v = lw[i]
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError("forecast.%s[%d]: %r is not an integer" % (name, i, v))
        # all checked first: a bad list leaves the old forecast
        self.n = self._copy(self.load_w, load_w)
        self.n_pv = 0
        if pv_w is not None:
            if self.pv_w is None:
                self.pv_w = [0] * MAX_FC
            self.n_pv = self._copy(self.pv_w, pv_w)
        self.n_aux = 0
        if aux_w is not None:
            if self.aux_w is None:
                self.aux_w = [0] * MAX_FC
            self.n_aux = self._copy(self.aux_w, aux_w)
        self.base_s = base_s
        self.t0 = clamp(t0 - base_s, -TSAT, TSAT)
        self.step_s = step_s
        self.exp = clamp(exp - base_s, -TSAT, TSAT)

    @staticmethod
    def _copy(dst, src):
        n = _min(len(src), MAX_FC)
        for i in range(n):
            dst[i] = clamp(src[i], 0, WMAX)
        return n


class Profile:
    """The forecast net load per plan block: the cloud's load forecast (else persistence)
    + aux - PV (the present value handing over to a clear-sky parabola times the learnt
    index)."""

    def __init__(self, p, n_blocks):
        self.n_blocks = n_blocks
        self.pv_persist_min = div_trunc(p["pv_persist_s"], 60)
        self.pv_peak_w = p["pv_peak_w"]
        self.pv_next_milli = p["pv_next_milli"]
        self.sun_rise_s = p["sun_rise_s"]
        self.day_s = p["sun_set_s"] - p["sun_rise_s"]
        self.tz_s = p["tz_s"]
        # learnt: clear-sky index the plan counts on (0.01 %): starts at pv_expect_milli,
        # then follows what the PV really gives against the clear-sky curve (dust, haze)
        self.pv_index_cpct = p["pv_expect_milli"] * 10
        self.learn_plans = 0     # plans today that learnt the PV index (up to KCI_FAST)
        # learnt profiles (learnt.py; site.plan_learnt): today's PV against the learnt PV
        # profile (0.01 %, 10000 = a day like the learnt average, up to 2x), learnt like
        # the index above; the plan counts on learnt PV x this where a slot is learnt
        self.use_learnt = p["plan_learnt"] > 0
        self.learnt_it = p["plan_learnt"] == 2      # also the IT profile past the forecast
        self.pv_rel_cpct = 10000
        self.rel_plans = 0
        self.tod_last = 0        # local time of day at the last plan
        self.dark = True         # no PV expected now (the plan is then trustworthy)
        # profiles: forecast net load per block; pv_next_milli < 1000: `net_w` counts on
        # less PV for a day not seen yet, `net_learnt_w` on the learnt index; the plan on
        # the latter is made too (never less precharge than it, no grid charge that would
        # only make that day spill PV). `walk` is the profile feasible() walks.
        self.net_w = [0] * self.n_blocks
        self.net_learnt_w = [0] * self.n_blocks if self.pv_next_milli < 1000 else self.net_w
        self.fc_blocks = 0       # plan blocks covered by the load forecast
        self.unseen_block = 0    # plan blocks before the daylight not seen yet
        self.sunset = False      # the last update() was the first in the dark
        # _from_fc's figures for one block: the IT mean, and the sums and counts of the
        # block's steps the PV and aux forecasts cover
        self.b_it = 0
        self.b_pv = 0
        self.c_pv = 0
        self.b_aux = 0
        self.c_aux = 0

    def tod(self, now):
        """Local time of day (s), folded without a bare %."""
        tod = now + self.tz_s
        if tod < 0 or tod >= 86400:
            tod = tod - div_trunc(tod, 86400) * 86400
            if tod < 0:
                tod += 86400
        return tod

    def pv_expect(self, tod):
        """Clear-sky PV (W) at local time of day tod (s, may run past midnight)."""
        while tod >= 86400:
            tod -= 86400
        x = tod - self.sun_rise_s
        if x <= 0 or x >= self.day_s:
            return 0
        u = frac(x, self.day_s)            # 0..10000
        return mdiv(self.pv_peak_w, div_trunc(u * (10000 - u), 2500), 10000)

    def _learn_pv(self, tod, pv, lt):
        # the clear-sky index from the PV now (and today's PV against the learnt profile);
        # returns the start of the daylight not seen yet (s from today's midnight)
        x0 = self.pv_expect(tod)
        dark = x0 == 0
        self.sunset = dark and not self.dark
        self.dark = dark
        if dark or tod < self.tod_last:
            self.learn_plans = 0            # a new day (also where the sun never sets)
            self.rel_plans = 0
        self.tod_last = tod
        if x0 > div_trunc(self.pv_peak_w, 10):
            # yesterday's index is yesterday's weather: the first plans of a day with the
            # sun up replace it fast, then a ~30 min average follows
            g = 32
            if self.learn_plans < KCI_FAST:
                self.learn_plans += 1
                g = 4
            r = frac(_min(pv, x0), x0)
            self.pv_index_cpct = clamp(self.pv_index_cpct + div_trunc(r - self.pv_index_cpct, g),
                                       500, 10000)
        if lt is not None:
            s = lt.slot_of(tod)
            xl = lt.pv[s]
            if lt.seen[s] and xl > div_trunc(lt.pv_max, 10):
                g = 32              # the same gains as the index above
                if self.rel_plans < KCI_FAST:
                    self.rel_plans += 1
                    g = 4
                r = frac(_min(pv, 2 * xl) >> 1, xl) * 2     # 0..20000 (pv >= 0)
                self.pv_rel_cpct = clamp(self.pv_rel_cpct + div_trunc(r - self.pv_rel_cpct, g),
                                         500, 20000)
        # today's until its index is learnt (before that the index is yesterday's), then
        # tomorrow's
        return self.sun_rise_s if self.learn_plans < KCI_FAST else self.sun_rise_s + 86400

    def _pv_block(self, tb, lt):
        # the PV (W) the plan counts on at local time tb (s, may run past midnight): the
        # learnt slot x today's index against it, else the clear-sky parabola x the index
        if lt is not None:
            s = lt.slot_of(tb)
            if lt.seen[s]:
                return mdiv(lt.pv[s], self.pv_rel_cpct >> 1, 5000)
        return mdiv(self.pv_expect(tb), self.pv_index_cpct, 10000)

    def _from_fc(self, fc, d0, m, sub, itx):
        # one block's m steps from the forecast; d0: the block start from fc.t0 (s,
        # |.| < 2**29 + 1 day); itx: the IT where the forecast does not reach
        st = fc.step_s
        tot = 0
        self.b_pv = 0
        self.c_pv = 0
        self.b_aux = 0
        self.c_aux = 0
        for j in range(m):
            v = itx
            dk = d0 + j * sub
            if dk >= 0:
                i = div_trunc(dk, st)
                if i < fc.n:
                    v = fc.load_w[i]
                if i < fc.n_pv:
                    self.b_pv += fc.pv_w[i]       # <= 15 x 10 MW
                    self.c_pv += 1
                if i < fc.n_aux:
                    self.b_aux += fc.aux_w[i]
                    self.c_aux += 1
            tot += v
        self.b_it = div_trunc(tot, m)

    def update(self, now, pv, it, aux, fc, lt=None):
        """Forecast net load per block into net_w (and net_learnt_w): IT forecast (mean of
        its points in the block), past it the learnt IT profile (lt: learnt.Learnt, used
        with site.plan_learnt; else the base load) + aux (the learnt profile after the
        present block, else persistence) - PV handing over from the present value to the
        expectation (the learnt PV profile, else the clear-sky parabola, times today's
        index); the cloud's aux and PV forecasts, where it sent them, over both until
        they expire. Returns: forecast in force."""
        n = self.n_blocks
        if not self.use_learnt:
            lt = None
        rf = clamp(now - fc.base_s, -TSAT, TSAT)
        fcok = fc.n > 0 and rf < fc.exp
        st = fc.step_s
        m = 1 if st >= BLOCK_S else div_trunc(BLOCK_S, st)
        sub = BLOCK_S if m == 1 else st
        pvp = self.pv_persist_min
        tod = self.tod(now)
        nxt = 0
        if self.pv_peak_w > 0:
            nxt = self._learn_pv(tod, pv, lt)
        self.unseen_block = 0
        # blocks the load forecast covers in full (the cap ratchet trusts only those)
        self.fc_blocks = 0
        if fcok:
            x = fc.t0 + fc.n * st - rf          # |.| < 2**29 + 1 day
            if x > 0:
                self.fc_blocks = _min(n, div_trunc(x, BLOCK_S))
        # past the end of the load forecast: its lowest point (the base load; the tracker
        # knows no jobs that far out), or the present value if lower. Not the present
        # value alone: a running job would seem to run on for the whole horizon.
        itb = it
        if fcok:
            for i in range(fc.n):
                itb = _min(itb, fc.load_w[i])
        pvn = self.pv_next_milli
        for k in range(n):
            mm = k * 15 + 7              # block middle, minutes from now
            tb = tod + mm * 60           # its local time of day (< 2 days)
            # PV: the present value, handing over linearly (pv_persist_s) to the expectation
            x = 0
            xo = 0
            if self.pv_peak_w > 0:
                xo = self._pv_block(tb, lt)
                x = xo
                if tb >= nxt and pvn < 1000:
                    x = mdiv(xo, pvn, 1000)
                if tb < nxt:
                    self.unseen_block = k + 1
            itx = itb
            auxk = aux
            if lt is not None and k > 0:
                sl = lt.slot_of(tb)
                if lt.seen[sl]:
                    auxk = lt.aux[sl]
                    if self.learnt_it:
                        itx = lt.it[sl]
            f = itx + auxk
            if fcok:
                # the cloud's forecasts where they reach (IT; PV and aux when it sent them)
                self._from_fc(fc, rf + k * BLOCK_S - fc.t0, m, sub, itx)
                if self.c_aux > 0:
                    auxk = div_trunc(self.b_aux + (m - self.c_aux) * auxk, m)
                f = self.b_it + auxk
                if self.c_pv > 0:
                    x = div_trunc(self.b_pv + (m - self.c_pv) * x, m)
                    xo = div_trunc(self.b_pv + (m - self.c_pv) * xo, m)
            if mm < pvp:
                x = mdiv(pv, pvp - mm, pvp) + mdiv(x, mm, pvp)
                xo = mdiv(pv, pvp - mm, pvp) + mdiv(xo, mm, pvp)
            self.net_w[k] = f - x
            if pvn < 1000:
                self.net_learnt_w[k] = f - xo
        return fcok


class Planner:
    def __init__(self, p):
        # params (validated dict, see dispatch.validate_params)
        self.bat = Battery(p)
        # charge -> later discharge efficiency, 0.001 units
        self.eta_cd = div_trunc(p["eta_c_milli"] * p["eta_d_milli"], 1000)
        self.grid_cap_w = p["grid_cap_w"]
        self.cap_hard = p["grid_cap_hard"]
        self.margin_w = p["export_margin_w"]
        self.deadband_w = p["deadband_w"]
        self.tol_w = _max(10, div_trunc(p["pcs_w"], 200))
        self.n_blocks = _max(1, div_trunc(p["horizon_s"], BLOCK_S))
        self.precharge_blocks = _max(1, div_trunc(p["precharge_s"], BLOCK_S))
        # the forecast net load per block (and the learnt PV it counts on)
        self.profile = Profile(p, self.n_blocks)
        self.walk = self.profile.net_w    # the profile feasible() walks
        # the feasibility walk's figures (set by feasible())
        self.fail_block = 0      # block where the energy runs out (n_blocks if it lasts)
        self.spill = 0           # energy spilled (battery full)
        self.free = 0            # energy that can go to self-consumption now
        self.low = 0             # lowest energy before the battery first fills
        self.fill_block = 0      # block where the battery first fills
        self.self_until = 0      # feasible() holds self_level_w before this block, T after
        self.self_level_w = 0
        self.charge_wanted = False   # choose(): the level needs grid charging
        self.gmax_w = WMAX       # grid charge per block feasible() allows (precharge.py)
        self.pre_on = False      # a precharge episode runs: it is on, just in time or not
        # outputs
        self.level_w = 0             # plan level T: import the battery shaves down to (W)
        self.grid_charge = False     # grid (pre)charging needed to hold the level
        self.precharge_to_w = 0      # grid import the precharge fills up to (W)
        # effective import cap: the configured one, raised (ratchet, within a day) to the
        # lowest level the plan says is holdable once it says the cap is not; back to the
        # configured cap at sunset and when the battery is full
        self.cap_w = p["grid_cap_w"]

    # ---- feasibility -----------------------------------------------------------------

    def feasible(self, T, n, e0, emax, grid):
        """Hold the grid at T over `walk`: discharge above it, store PV surplus (and in
        the first `grid` blocks charge from the grid below T: 0 none, n all). Returns the
        W x block discharged, -1 if the energy above the floor runs out (block in
        fail_block, n if it lasts); spill: the energy spilled so far (battery full)."""
        self.fail_block = n
        self.spill = 0
        e = e0
        need = 0
        low = e0                 # lowest energy before the battery first fills up
        clip = 0                 # energy the plan would have to spill (battery full)
        dmax = self.bat.discharge_max_w
        cmax = self.bat.charge_max_w
        k2 = self.eta_cd
        pf = self.walk
        T1 = T
        ks = self.self_until
        if ks > 0:
            T = self.self_level_w   # the self-consumption level before the first fill
        for k in range(n):
            if k == ks:
                T = T1
            f = pf[k]
            if f > T:
                d = f - T
                if d > dmax:
                    d = dmax
                e -= d
                need += d
                if e < 0:
                    self.fail_block = k
                    self.spill = clip
                    return -1
                if clip == 0 and e < low:
                    low = e
            elif e < emax:
                c = -f if f < 0 else 0
                if k < grid and T - f > c:
                    c = _min(T - f, _max(c, self.gmax_w))
                if c > cmax:
                    c = cmax
                if c > 0:
                    ck = c // 1000          # c > 0: plain floor
                    e += ck * k2 + ((c - ck * 1000) * k2) // 1000
                    if e > emax:
                        if clip == 0:
                            self.fill_block = k
                        if clip < emax:
                            clip += e - emax
                        e = emax
        # what can go to self-consumption now: no more than would be spilled later, and
        # never below the lowest point before that (the plan's peaks stay covered)
        self.free = _min(low, clip)
        self.spill = clip
        self.low = low
        return need

    def bisect(self, lo, hi, n, e0, emax, grid):
        """Smallest T in [lo, hi] that stays feasible (hi assumed feasible)."""
        while hi - lo > self.tol_w:
            mid = lo + ((hi - lo) >> 1)   # hi > lo: non-negative shift
            if self.feasible(mid, n, e0, emax, grid) >= 0:
                hi = mid
            else:
                lo = mid
        return hi

    # ---- the decisions ---------------------------------------------------------------

    def _raise_cap(self, n, soc, T):
        # The cap cannot be held through the near part of the horizon even with grid
        # charging: emptying the battery to hold it leaves the next surge unshaved (it
        # imports in full), so hold the lowest level that is holdable instead. Only with
        # a load forecast and when the plan's PV is solid (plan()). Only upwards within a
        # day (a noisy plan must not make it hunt); the cap rule outranks the reserve, so
        # the energy down to soc_min counts. T: a holdable level (the plan's, >= this).
        b = self.bat
        sm = b.soc_min
        e0 = usable(b, soc, sm)
        emax = usable(b, b.soc_max, sm)
        c = self.cap_w
        n = _min(n, self.profile.fc_blocks)
        if n > 0 and self.feasible(c, n, e0, emax, n) < 0 and \
                self.fail_block < self.precharge_blocks:
            c = self.bisect(c, T, n, e0, emax, n)
            if c > self.cap_w + self.deadband_w:
                self.cap_w = c

    def _self_level(self, T, n, e0, emax, lo):
        # the lowest level that still lasts to the first fill with T after it
        self.self_until = self.fill_block
        hi = T
        while hi - lo > self.tol_w:
            mid = lo + ((hi - lo) >> 1)           # hi > lo: non-negative shift
            self.self_level_w = mid
            if self.feasible(T, n, e0, emax, 0) >= 0:
                hi = mid
            else:
                lo = mid
        self.self_until = 0
        return hi

    def _choose(self, n, e0, emax, fcok):
        # the plan level on the profile `walk`; sets charge_wanted when it needs the grid
        lo = self.margin_w
        hi = lo
        pf = self.walk
        for k in range(n):
            if pf[k] > hi:
                hi = pf[k]
        T = self.bisect(lo, hi, n, e0, emax, 0) if hi > lo else lo
        self.charge_wanted = False
        if T > lo:
            # would charging from the grid below the level allow a lower one? Only for a
            # hard need (the cap) or a forecast ramp: the gateway has no PV forecast, so a
            # pessimistic plan must not pull grid energy on its own
            Tc = self.bisect(lo, T, n, e0, emax, n)
            big = _max(self.tol_w + self.deadband_w, div_trunc(self.bat.discharge_max_w, 20))
            # the cap counts as a hard need within `big` of it too: a plan that holds the
            # cap by less than that has no room for forecast error
            if T > self.grid_cap_w - big or (fcok and T - Tc > big):
                # just in time: only when the shortfall is near (PV may still come first)
                self.feasible(_min(Tc, T - self.tol_w), n, e0, emax, 0)
                if self.fail_block < self.precharge_blocks or self.pre_on:
                    # charge up to the plan's level; for the cap (a hard need) with all
                    # the room under the cap: the same energy arrives sooner, so a plan
                    # that was too hopeful finds more stored. The shave level stays Tc.
                    self.precharge_to_w = Tc
                    if T > self.grid_cap_w - big:
                        self.precharge_to_w = _max(Tc, self.cap_w)
                    T = Tc
                    # a real need only: the plan at Tc does not hold without the grid
                    self.charge_wanted = self.feasible(Tc, n, e0, emax, 0) < 0
        return T

    def _choose_unseen(self, T, n, e0, emax, fcok):
        # pv_next_milli < 1000: pessimism about a day not seen yet keeps energy, and may
        # want grid charging the day the plan hopes for (net_learnt_w) does not. Never
        # less precharge than that day's plan; and no pessimist's grid charge that would
        # only make that day spill PV.
        pr = self.profile
        gcp = self.charge_wanted
        tgp = self.precharge_to_w
        self.walk = pr.net_learnt_w
        To = self._choose(n, e0, emax, fcok)
        use_o = False
        if self.charge_wanted:
            if gcp:
                T = _max(T, To)
                self.precharge_to_w = _max(tgp, self.precharge_to_w)
            else:
                T = To
                use_o = True
        elif gcp:
            # the pessimist's charge, before the day not seen yet: does it only make the
            # hoped-for day spill (more than that day's own plan spills)?
            self.feasible(To, n, e0, emax, 0)
            c0 = self.spill
            self.feasible(T, n, e0, emax, pr.unseen_block)
            if self.spill > c0 + self.tol_w * 4:       # tol W for an hour
                T = To
                use_o = True
            else:
                self.charge_wanted = True
                self.precharge_to_w = tgp
        self.walk = pr.net_learnt_w if use_o else pr.net_w
        return T

    def plan(self, now, pv, it, aux, soc, floor, fc, peak_w, first, lt=None):
        """Re-plan from the inputs: level_w, grid_charge, precharge_to_w, cap_w.
        floor: the reserve SOC (cpct); fc: LoadForecast; peak_w: the period's peak so far;
        lt: the learnt profiles (learnt.Learnt; used with site.plan_learnt)."""
        n = self.n_blocks
        b = self.bat
        pr = self.profile
        fcok = pr.update(now, pv, it, aux, fc, lt)
        if pr.sunset:
            self.cap_w = self.grid_cap_w    # a new night: the ratchet starts over
        e0 = usable(b, soc, floor)
        emax = usable(b, b.soc_max, floor)
        if soc >= b.soc_max - b.hyst:
            self.cap_w = self.grid_cap_w
        self.walk = pr.net_w
        T = self._choose(n, e0, emax, fcok)
        if pr.pv_next_milli < 1000:
            T = self._choose_unseen(T, n, e0, emax, fcok)
        gc = self.charge_wanted
        if T > self.cap_w and fcok and (pr.dark or pr.learn_plans >= KCI_FAST) and \
                not self.cap_hard:
            # on the learnt-index day: a cap raised for the pessimist's dull day would
            # stay raised all day when the day turns out sunny
            pu = self.walk
            self.walk = pr.net_learnt_w
            self._raise_cap(n, soc, T)
            self.walk = pu
        if self.precharge_to_w > _max(T, peak_w):
            self.precharge_to_w = _max(T, peak_w)   # a precharge never sets a new peak
        self.fill_block = 0
        # always run: it also measures the spill the self-consumption rule below spreads
        r = self.feasible(T, n, e0, emax, 0)
        self.grid_charge = gc and r < 0
        if not self.grid_charge and self.free > 0 and self.fill_block > 0:
            # the battery would fill up and spill PV later: until then, the lowest level
            # that still lasts to the fill with T after it: energy that would be spilled
            # goes to self-consumption now, the later peaks stay covered
            T = self._self_level(T, n, e0, emax, self.margin_w)
        self.walk = pr.net_w
        # hysteresis on the level: a small re-plan does not move the setpoint
        d = T - self.level_w
        if d > self.deadband_w or -d > self.deadband_w or first:
            self.level_w = T
