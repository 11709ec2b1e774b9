# The site's electricity tariff (docs/config.md, "site.tariff"): time-of-use periods by
# hour of day per season (a set of months), an energy price per period, a demand charge on
# the monthly maximum 15-minute mean import and an optional export price. Prices are ints
# in 0.01 fen/kWh (cfen; 1 CNY = 10,000 cfen), so 0.6218 CNY/kWh, as provinces publish
# them to four decimals, is exactly 6218 and the firmware stays integer. No I/O; the
# lookups allocate nothing and stay below 2**30 on a 32-bit port.
from edgefw.fx import div_trunc, mdiv
from protocols import topics as T

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_PERIODS = const(8)
PRICE_MAX = const(1000000)       # 100 CNY/kWh
DEMAND_MAX = const(10000000)     # 1,000 CNY/kW.month
CYCLE_MAX = const(100000)        # 10 CNY/kWh of throughput
# days from 0000-03-01 (the civil calendar's era start) to 2025-01-01, clock.rel()'s epoch
_Z_EPOCH = const(739557)
_KEYS = ("name", "note", "periods", "seasons", "demand_cfen_kw", "export_cfen",
         "cycle_cost_cfen")


def _isint(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(errs, d, key, f, lo, hi, dflt):
    # optional field: absent or null is the default; the check is the link's
    if d.get(key) is None:
        return dflt
    v = T.need_int(d, key, lo, hi, errs, f + ".")
    return dflt if v is None else v


def _periods(errs, ps, f):
    if not isinstance(ps, list) or not ps or len(ps) > MAX_PERIODS:
        errs.append("%s.periods: must be a list of 1..%d periods" % (f, MAX_PERIODS))
        return []
    out = []
    for i in range(len(ps)):
        q = ps[i]
        fi = "%s.periods[%d]" % (f, i)
        if not isinstance(q, dict):
            errs.append("%s: must be an object" % fi)
            out.append({"name": "p%d" % i, "price_cfen": 0})
            continue
        for k in q:
            if k not in ("name", "price_cfen", "note"):
                errs.append("%s.%s: unknown field (typo?)" % (fi, k))
        n = q.get("name", "p%d" % i)
        if not isinstance(n, str) or not n or len(n) > 16:
            errs.append("%s.name: %r is not text of 1..16 characters" % (fi, n))
            n = "p%d" % i
        if q.get("price_cfen") is None:
            errs.append("%s.price_cfen: missing (integer 0..%d, 0.01 fen/kWh)" % (fi, PRICE_MAX))
        out.append({"name": n, "price_cfen": _int(errs, q, "price_cfen", fi, 0, PRICE_MAX, 0)})
    return out


def _hours(errs, h, fs, np_):
    if not isinstance(h, list) or len(h) != 24:
        errs.append("%s.hours: must be a list of 24 period indices (hour 0..23)" % fs)
        return [0] * 24
    out = []
    for j in range(24):
        x = h[j]
        if not _isint(x) or x < 0 or x >= np_:
            errs.append("%s.hours[%d]: %r is not a period index 0..%d" % (fs, j, x, np_ - 1))
            x = 0
        out.append(x)
    return out


def _seasons(errs, ss, f, np_):
    if not isinstance(ss, list) or not ss or len(ss) > 12:
        errs.append("%s.seasons: must be a list of 1..12 seasons" % f)
        return []
    owner = [-1] * 12
    out = []
    for i in range(len(ss)):
        s = ss[i]
        fs = "%s.seasons[%d]" % (f, i)
        if not isinstance(s, dict):
            errs.append("%s: must be an object" % fs)
            continue
        for k in s:
            if k not in ("name", "months", "hours", "note"):
                errs.append("%s.%s: unknown field (typo?)" % (fs, k))
        ms = s.get("months")
        if not isinstance(ms, list) or not ms:
            errs.append("%s.months: must be a list of months 1..12" % fs)
            ms = []
        for j in range(len(ms)):
            m = ms[j]
            if not _isint(m) or m < 1 or m > 12:
                errs.append("%s.months[%d]: %r is not a month 1..12" % (fs, j, m))
            elif owner[m - 1] >= 0:
                errs.append("%s.months[%d]: month %d is also in seasons[%d]"
                            % (fs, j, m, owner[m - 1]))
            else:
                owner[m - 1] = i
        out.append({"name": s.get("name", "s%d" % i), "months": ms,
                    "hours": _hours(errs, s.get("hours"), fs, max(1, np_))})
    miss = [str(m + 1) for m in range(12) if owner[m] < 0]
    if miss and len(out) == len(ss):
        errs.append("%s.seasons: months %s are in no season" % (f, ",".join(miss)))
    return out


def validate(t, field="site.tariff", export_allowed=False):
    """Check a tariff section; -> (normalised dict or None, ["field: problem", ...]).
    Never raises: a fault in a check is an error too (the config then does not run)."""
    try:
        return _validate(t, field, export_allowed)
    except Exception as e:
        return None, ["%s: cannot be checked (%s: %s)" % (field, type(e).__name__, e)]


def _validate(t, f, export_allowed):
    if t is None:
        return None, []
    if not isinstance(t, dict):
        return None, ["%s: must be an object" % f]
    errs = []
    for k in t:
        if k not in _KEYS:
            errs.append("%s.%s: unknown field (typo?)" % (f, k))
    ps = _periods(errs, t.get("periods"), f)
    out = {"periods": ps, "seasons": _seasons(errs, t.get("seasons"), f, len(ps)),
           "demand_cfen_kw": _int(errs, t, "demand_cfen_kw", f, 0, DEMAND_MAX, 0),
           "export_cfen": _int(errs, t, "export_cfen", f, 0, PRICE_MAX, None),
           "cycle_cost_cfen": _int(errs, t, "cycle_cost_cfen", f, 0, CYCLE_MAX, 0)}
    if out["export_cfen"] is not None and not export_allowed:
        errs.append("%s.export_cfen: an export price needs site.export_allowed true" % f)
    for k in ("name", "note"):
        if k in t:
            out[k] = t[k]
    return (None if errs else out), errs


def _floor_div(a, b):
    # floor(a / b) for b > 0 whatever the sign of a
    q = div_trunc(a, b)
    if q * b > a:
        q -= 1
    return q


def month_of_day(days):
    """Civil month 1..12 of the day `days` after 2025-01-01 (may be negative; |days| well
    below 2**29 / 5). The proleptic Gregorian calendar (H. Hinnant's civil_from_days), all
    intermediates positive and small."""
    z = days + _Z_EPOCH
    era = z // 146097            # z > 0 for any day after year 0
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    return mp + 3 if mp < 10 else mp - 9


class Tariff:
    """The validated tariff as int tables. now: site time (clock.rel(), s since
    2025-01-01 UTC); local time = now + tz_s; day0: days added to the site's date (0 on a
    gateway; a scenario whose t_s starts at its own day 1 gives that day's offset)."""

    def __init__(self, t, tz_s=28800, day0=0):
        self.tz_s = tz_s
        self.day0 = day0
        ps = t["periods"]
        self.n_periods = len(ps)
        self.price = [q["price_cfen"] + 0 for q in ps]
        self.names = [q["name"] for q in ps]
        self.season_of = [0] * 12
        self.hours = []
        ss = t["seasons"]
        for i in range(len(ss)):
            for m in ss[i]["months"]:
                self.season_of[m - 1] = i
            self.hours.append([h + 0 for h in ss[i]["hours"]])
        self.demand_cfen_kw = t["demand_cfen_kw"] + 0
        e = t.get("export_cfen")
        self.export_cfen = -1 if e is None else e + 0     # -1: no export price
        self.cycle_cost_cfen = t.get("cycle_cost_cfen", 0) + 0
        lo = hi = self.price[0]
        for x in self.price:
            lo = x if x < lo else lo
            hi = x if x > hi else hi
        self.min_cfen = lo
        self.max_cfen = hi

    def day(self, now):
        """Local day number (days after 2025-01-01, day0 included)."""
        return _floor_div(now + self.tz_s, 86400) + self.day0

    def month(self, now):
        return month_of_day(self.day(now))

    def hour(self, now):
        """Local hour of day 0..23."""
        loc = now + self.tz_s
        return div_trunc(loc - _floor_div(loc, 86400) * 86400, 3600)

    def period_at(self, month, hour):
        return self.hours[self.season_of[month - 1]][hour]

    def period(self, now):
        return self.period_at(self.month(now), self.hour(now))

    def price_cfen(self, now):
        """Energy price (0.01 fen/kWh) of the import at site time now."""
        return self.price[self.period(now)]

    def prices_ahead(self, now, out):
        """Fill out[k] with the price of local hour k from now's hour (k = 0 .. len-1),
        crossing midnight and month ends. Allocates nothing."""
        d = self.day(now)
        h = self.hour(now)
        m = month_of_day(d)
        for k in range(len(out)):
            out[k] = self.price[self.period_at(m, h)]
            h += 1
            if h == 24:
                h = 0
                d += 1
                m = month_of_day(d)


# ---- rule 5b: time-of-use arbitrage (docs/dispatch.md, "Tariff") ----------------------

R_TOU = "tou"          # reason (an interned constant: assigning it does not allocate)
R_SHAVE = "shave"      # dispatch.R_SHAVE (rule 5's shave above the plan level)
_BLOCK_S = const(900)  # the planner's block
WMAX_CAP = const(10000000)   # grid_cap_w at this (dispatch.WMAX): no cap configured
_NONE = const(0)
_DISCHARGE = const(1)
_CHARGE = const(2)


class TouRule:
    """Charge in the valley, discharge in the peak, from the price schedule of the next
    24 h and the planner's forecast net load per block (plan.profile.net_w, level_w). A
    cycle is made only where it pays: gain(lo, hi) > 0, the round-trip efficiency and the
    wear of both legs (cycle_cost_cfen) counted. It only moves the wanted setpoint (the
    Dispatcher's hook after rule 5): rules 1-4 (SOC window, BMS limits, zero export, the
    cap, the reserve) still bound it, and a cloud schedule window still replaces it. The
    decision is made once per plan; step() allocates nothing."""

    def __init__(self, p, plan):
        self.tariff = Tariff(p["tariff"], p["tz_s"])
        self.plan = plan
        self.margin_w = p["export_margin_w"]
        self.n = plan.n_blocks
        # energy arbitrage leaves for the import cap (W x block): 30 min at full power
        self.cap_keep = plan.bat.discharge_max_w * 2 if p["grid_cap_w"] < WMAX_CAP else 0
        self.pb = [0] * self.n                  # price per plan block (cfen/kWh)
        self.hp = [0] * (div_trunc(self.n, 4) + 2)   # price per hour from now's hour
        self.eta_cd = plan.eta_cd
        self.wear = div_trunc(self.tariff.cycle_cost_cfen * (1000 + plan.eta_cd), 1000)
        self.mode = _NONE
        self.charge_to_w = 0     # charging: grid import it fills up to (W)
        self.seen = -1           # the plan (Dispatcher.t_plan) the decision was made for
        self.fresh = True
        self.hold = True         # _billed holds at the billed peak (decided per plan)

    def gain(self, lo, hi):
        """cfen per kWh charged at price lo and given back at price hi, less the losses and
        the wear of both legs; > 0: the cycle pays."""
        return div_trunc(hi * self.eta_cd, 1000) - lo - self.wear

    def _prices(self, now):
        t = self.tariff
        t.prices_ahead(now, self.hp)
        loc = now + t.tz_s
        s = loc - _floor_div(loc, 3600) * 3600      # seconds into the hour
        for k in range(self.n):
            self.pb[k] = self.hp[div_trunc(s + k * _BLOCK_S, 3600)]

    def _arb(self, k0, k1, T, lo, hi):
        # W x block beyond the plan's shave (above T) that the dear blocks k0..k1-1 (price
        # above hi, a cycle charged at lo pays) ask of the battery to import no more than
        # the margin
        f = self.plan.profile.net_w
        dmax = self.plan.bat.discharge_max_w
        m = self.margin_w
        tot = 0
        for k in range(k0, k1):
            q = self.pb[k]
            if q > hi and self.gain(lo, q) > 0:
                x = f[k] - m
                y = f[k] - T
                tot += (0 if x <= 0 else (dmax if x > dmax else x)) - \
                    (0 if y <= 0 else (dmax if y > dmax else y))
        return tot

    def _emax(self, d):
        # deliverable energy of a full battery above the reserve floor (W x block)
        b = self.plan.bat
        e = mdiv(b.wh, b.soc_max - d.floor if b.soc_max > d.floor else 0, 10000)
        return mdiv(e, b.eta_d, 1000) * 4

    def _lowest(self, p0):
        # the lowest price ahead (p0 now); ints only: the step allocates nothing
        lo = p0
        for k in range(1, self.n):
            if self.pb[k] < lo:
                lo = self.pb[k]
        return lo

    def _refill(self, lo):
        # the block where the next refill at price lo starts (n: none ahead)
        pb = self.pb
        for k in range(1, self.n):
            if pb[k] == lo and pb[k - 1] != lo:
                return k
        return self.n

    def _refills(self, e0, emax):
        # True if the forecast PV surplus of the next 24 h (as stored: the round trip,
        # charge_max per block) fills the room the battery has now: energy discharged now
        # would only be spilled later (the plan's self-consumption level uses it)
        f = self.plan.profile.net_w
        cmax = self.plan.bat.charge_max_w
        room = emax - e0
        s = 0
        for k in range(self.n):
            x = f[k]
            if x < 0:
                x = -x
                s += mdiv(cmax if x > cmax else x, self.eta_cd, 1000)
                if s >= room:
                    return True
        return s >= room

    def _can_wait(self, e0, d):
        # True if the blocks before the forecast PV surplus starts could take e0 below the
        # billed peak at half their room (discharge_max, no export): energy that would be
        # spilled at the refill can wait for them, and insures the peak till then
        f = self.plan.profile.net_w
        dmax = self.plan.bat.discharge_max_w
        P = self._hold_w(d)
        s = 0
        for k in range(1, self.n):
            x = f[k]
            if x < 0:
                return False
            x = (P if x > P else x) - self.margin_w
            s += (0 if x <= 0 else (dmax if x > dmax else x)) >> 1
            if s >= e0:
                return True
        return False

    def _decide(self, d, now, soc):
        self._prices(now)
        pl = self.plan
        b = pl.bat
        n = self.n
        p0 = self.tariff.price_cfen(now)
        T = pl.level_w
        e0 = 0
        if soc > d.floor:
            e0 = mdiv(b.wh, soc - d.floor, 10000)
            e0 = mdiv(e0, b.eta_d, 1000) * 4            # deliverable, W x block
        emax = self._emax(d)
        # with a demand charge: hold at the billed peak (_billed) unless the energy would
        # be spilled at a PV refill and cannot wait for the hours before it
        self.hold = not self._refills(e0, emax) or self._can_wait(e0, d)
        lo = self._lowest(p0)
        R = self._refill(lo)
        self.mode = _NONE
        if lo < p0 and self.gain(lo, p0) > 0:
            # discharge now if, with the energy the dearer blocks up to the refill want
            # kept (and a quarter of the battery for forecast error: a missed evening load
            # must not leave the cap to an empty battery; with a cap, half an hour at full
            # power more for surges no forecast shows), the plan's level still holds
            # until the refill (the planner's own walk, PV included)
            x = self._arb(0, R, T, lo, p0) + (emax >> 2) + self.cap_keep
            if e0 > x and pl.feasible(T, R, e0 - x, emax, 0) >= 0:
                self.mode = _DISCHARGE
            return
        # charge now if a block ahead pays for it and none cheaper comes before it
        e1 = 0
        for k in range(1, n):
            q = self.pb[k]
            if q < p0:
                return
            if self.gain(p0, q) > 0:
                e1 = k
                break
        if e1 == 0:
            return
        r2 = n
        for k in range(e1, n):
            if self.pb[k] <= p0:
                r2 = k
                break
        # enough for the plan's level and the dear blocks until the next cheap period
        need = pl.feasible(T, r2, emax, emax, 0)
        want = self._arb(e1, r2, T, p0, p0) + (emax if need < 0 else need)
        want = (emax if want > emax else want) - e0
        if want <= pl.tol_w:
            return
        # but no grid energy that would only make the battery spill PV later: where the
        # plan's walk fills the battery (PV), no more than the dear blocks before that
        # fill draw from it (grid energy stored beyond that is PV turned away)
        pl.fill_block = r2
        pl.feasible(T, r2, e0, emax, 0)
        if pl.spill > pl.tol_w * 4 and pl.fill_block < r2:       # tol W for an hour
            kf = pl.fill_block
            x = pl.feasible(T, kf, emax, emax, 0)                # the plan's shave to it
            x = self._arb(e1, kf, T, p0, p0) + (0 if x < 0 else x) - e0
            want = x if x < want else want
        if want <= pl.tol_w:
            return
        self.mode = _CHARGE
        c = T if T > d.peak.peak_w else d.peak.peak_w
        if self.tariff.demand_cfen_kw == 0:
            # no demand charge: spread over the cheap blocks left, whatever the import
            # (with one, the charge never sets a new billed demand)
            cmax = b.charge_max_w
            pw = div_trunc(want, e1)
            pw = pl.profile.net_w[0] + (cmax if pw > cmax else pw)
            c = pw if pw > c else c
        # never up to the import cap: a surge while charging there would pass it; and a
        # tenth below the level, for the load's noise (at the level, every upward wiggle
        # before the ramp catches it would be a new billed 15-min peak)
        top = div_trunc(pl.cap_w * 9, 10)
        c = top if c > top else c
        c -= div_trunc(c, 10)
        self.charge_to_w = c if c > self.margin_w else self.margin_w

    def _hold_w(self, d):
        # the billed peak less the deadband, never above the site's import cap: a cap
        # passed once (the demand billed above it) is still the cap the plan holds
        c = self.plan.grid_cap_w
        x = d.peak.peak_w - d.deadband_w
        return c if x > c else x

    def _billed(self, d, net):
        # a demand charge bills the period's highest 15-min mean import: shaving below the
        # one already billed (d.peak) buys no demand, costs the losses and the wear, and
        # empties the battery a higher peak later in the period needs. Hold there (less
        # the deadband, so the ramp's wander does not bill a new one); the energy price
        # part is rule 5b's discharge below
        if d.want_why != R_SHAVE or self.tariff.demand_cfen_kw == 0 or not self.hold:
            return
        x = net - self._hold_w(d)
        if x < d.want:
            d.want = x if x > 0 else 0

    def want(self, d, now, net, soc):
        """The hook (Dispatcher.step after rule 5): move d.want for the arbitrage."""
        if self.fresh or d.t_plan != self.seen:
            self.fresh = False
            self.seen = d.t_plan
            self._decide(d, now, soc)
        self._billed(d, net)
        if self.mode == _DISCHARGE and not self.plan.grid_charge:
            x = net - self.margin_w
            if x > d.want:
                d.want = x
                d.want_why = R_TOU
        elif self.mode == _CHARGE:
            x = net - self.charge_to_w
            if x < d.want:
                d.want = x
                d.want_why = R_TOU
