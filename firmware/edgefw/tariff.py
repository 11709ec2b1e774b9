# The site's electricity tariff (docs/config.md, "site.tariff"): time-of-use periods by
# hour of day per season (a set of months), an energy price per period, a demand charge on
# the monthly maximum 15-minute mean import and an optional export price. Prices are ints
# in 0.01 fen/kWh (cfen; 1 CNY = 10,000 cfen), so 0.6218 CNY/kWh, as provinces publish
# them to four decimals, is exactly 6218 and the firmware stays integer. No I/O; the
# lookups allocate nothing and stay below 2**30 on a 32-bit port.
from edgefw.fx import div_trunc

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
    v = d.get(key, dflt)
    if v is None:
        return dflt
    if not _isint(v):
        errs.append("%s.%s: %r is not an integer" % (f, key, v))
        return dflt
    if v < lo or v > hi:
        errs.append("%s.%s: %d out of range %d..%d" % (f, key, v, lo, hi))
        return dflt
    return v


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
