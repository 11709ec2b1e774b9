# Site model: the latest value, age and quality of every point, and the derived site
# powers the controller works with (contract signs: grid_w + = import, bat_w + =
# discharge; grid_w = it_w + aux_w - pv_w - bat_w). Integers only.
from edgefw import clock
from edgefw.fx import div_round, divmod_trunc

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

Q_OK = const(0)       # fresh reading
Q_DERIVED = const(1)  # computed from the power balance, not measured
Q_STALE = const(2)    # last reading too old or the device is stale
Q_NONE = const(3)     # never read / nothing configured
QNAMES = ("ok", "derived", "stale", "none")

# Ages saturate: ticks wrap (2**30 ms on 32-bit ports), so an age past 2**29 ms would
# come back as fresh. A point older than AGE_CAP_MS (or its device's max age, if longer)
# is marked "very old" (its read time becomes None) by point()/sweep(); only a new read
# clears that. sweep() runs with every update(), far more often than once per 6 days.
AGE_CAP_MS = const(3600000)

DERIVED = ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w")

_SUMMED = (("pv_w", "pv_meter"), ("it_w", "load_meter"), ("aux_w", "aux_meter"))


def va_w(ca, cv):
    """0.01 A x 0.01 V -> W, rounded, without intermediates above 2**30."""
    q, r = divmod_trunc(cv, 100)
    wi, rem = divmod_trunc(ca * q, 100)
    return wi + div_round(rem * 100 + ca * r, 10000)


def _derive_missing(v, q):
    """One missing (or stale) power of the balance derived from the others; returns its
    name, "-" when two or more are unknown, None when none is."""
    miss = None
    for k in ("grid_w", "pv_w", "it_w", "bat_w"):
        if v[k] is None or q[k] >= Q_STALE:
            if miss is not None:
                return "-"  # two or more unknown: nothing to derive
            miss = k
    if miss is not None and v["aux_w"] is not None:
        g, p, i, a, bb = v["grid_w"], v["pv_w"], v["it_w"], v["aux_w"], v["bat_w"]
        if miss == "grid_w":
            v[miss] = i + a - p - bb
        elif miss == "pv_w":
            v[miss] = i + a - g - bb
        elif miss == "it_w":
            v[miss] = g + p + bb - a
        else:
            v[miss] = i + a - p - g
        q[miss] = Q_DERIVED
    return miss


class Site:
    def __init__(self, devices, stale_polls=3):
        self.devices = devices
        self.stale_polls = stale_polls
        self.roles = {}
        for d in devices:
            self.roles.setdefault(d.role, []).append(d)
        self.v = {}   # derived name -> int or None
        self.q = {}   # derived name -> Q_*
        for k in DERIVED:
            self.v[k] = None
            self.q[k] = Q_NONE
        self.t = None  # site ms of the last update
        self.aux_est = 0  # unmetered other load: median of the last three balances of
        # four fresh meters (one skewed balance, meters read either side of a setpoint step
        # with the PCS readback lagging, was 200 W off and then derived the grid power)
        self.aux_prev1 = None  # the balance before the last one, and the one before that
        self.aux_prev2 = None
        # several packs or PCS: their aggregate (packs.py); None keeps one-pack sites as
        # they were
        multi = len(self.roles.get("bms") or ()) > 1 or len(self.roles.get("pcs") or ()) > 1
        self.packs = None
        if multi:  # imported only then (RAM of a one-pack site)
            from edgefw.packs import Packs
            self.packs = Packs(self, va_w)

    def dev(self, role):
        ds = self.roles.get(role)
        return ds[0] if ds else None

    def max_age(self, d):
        p = d.period_ms if d.period_ms else 1000
        return p * (self.stale_polls + 1)

    def cap(self, d):
        m = self.max_age(d)
        return m if m > AGE_CAP_MS else AGE_CAP_MS

    def point(self, dev, name, now=None):
        """(value, age_ms, quality) of one point of a device (value None if never read).
        Ages are capped at cap(dev): older is reported as cap(dev) and stale."""
        if now is None:
            now = clock.site_ms()
        v = dev.values.get(name)
        if v is None:
            return None, None, Q_NONE
        t = dev.t.get(name)
        cap = self.cap(dev)
        if t is None:
            return v, cap, Q_STALE
        age = clock.ticks_diff(now, t)
        if age > cap or age < -cap:
            dev.t[name] = None  # very old: stays stale however far the ticks move on
            return v, cap, Q_STALE
        if dev.stale() or age > self.max_age(dev):
            return v, age, Q_STALE
        return v, age, Q_OK

    def sweep(self, now=None):
        """Mark every point older than its cap as very old (wrap-safe ages)."""
        if now is None:
            now = clock.site_ms()
        for d in self.devices:
            t = d.t
            cap = self.cap(d)
            for k in t:
                tk = t[k]
                if tk is not None:
                    a = clock.ticks_diff(now, tk)
                    if a > cap or a < -cap:
                        t[k] = None

    def role_point(self, role, name, now=None):
        d = self.dev(role)
        if d is None:
            return None, None, Q_NONE
        return self.point(d, name, now)

    def _sum(self, role, name, now):
        ds = self.roles.get(role)
        if not ds:
            return 0, Q_NONE  # nothing of this kind on site: counts as 0 W
        tot = 0
        q = Q_OK
        for d in ds:
            v, _, qq = self.point(d, name, now)
            if v is None:
                return None, Q_NONE
            tot += v
            if qq > q:
                q = qq
        return tot, q

    def update(self, now=None):
        """Recompute the derived values; returns the dict of values."""
        if now is None:
            now = clock.site_ms()
        self.sweep(now)
        v = self.v
        q = self.q
        configured = {}
        for k, role in _SUMMED:
            if k == "pv_w" and role not in self.roles and "pv_inverter" in self.roles:
                # no PV meter: the limited inverter's own AC power is the PV production
                # (with a PV meter, that meter counts and the inverter is only limited)
                role = "pv_inverter"
            v[k], q[k] = self._sum(role, "p_w", now)
            configured[k] = role in self.roles
        configured["grid_w"] = "grid_meter" in self.roles
        v["grid_w"], _, q["grid_w"] = self.role_point("grid_meter", "p_w", now)
        # battery power: the PCS's AC measurement, else the BMS's DC (V x I, I < 0 = discharge)
        pk = self.packs
        if pk is not None:
            for d in pk.bms:
                pk.state[d.name] = pk.pack_state(d, now)
            b, qb = pk.bat_w(now)
        else:
            b, _, qb = self.role_point("pcs", "p_w", now)
        configured["bat_w"] = "pcs" in self.roles
        if b is None and pk is None:
            vv, _, q1 = self.role_point("bms", "v_cv", now)
            ii, _, q2 = self.role_point("bms", "i_ca", now)
            if vv is not None and ii is not None:
                b = va_w(-ii, vv)
                qb = q1 if q1 > q2 else q2
                configured["bat_w"] = True
        v["bat_w"] = b
        q["bat_w"] = qb
        if not configured["aux_w"]:
            # no aux meter: the last estimate stands in, so a derived power is not short
            # by the other load (cooling, lights) while one meter is silent
            v["aux_w"] = self.aux_est
        miss = _derive_missing(v, q)
        if not configured["aux_w"] and self.ok("grid_w", "pv_w", "it_w", "bat_w"):
            # no aux meter: what the meters do not explain is the other load
            a = v["grid_w"] + v["pv_w"] + v["bat_w"] - v["it_w"]
            v["aux_w"] = a if a > 0 else 0
            q["aux_w"] = Q_DERIVED
            if miss is None:
                self.aux_est = self._aux_median(v["aux_w"])
        if pk is not None:
            pk.update(now)
            self.t = now
            return v
        v["soc_cpct"], _, q["soc_cpct"] = self.role_point("bms", "soc_cpct", now)
        vv, _, qv = self.role_point("bms", "v_cv", now)
        for k, pt in (("ccl_w", "ccl_ca"), ("dcl_w", "dcl_ca")):
            a, _, qa = self.role_point("bms", pt, now)
            if a is None or vv is None:
                v[k] = None
                q[k] = Q_NONE
            else:
                v[k] = va_w(a, vv)
                q[k] = qa if qa > qv else qv
        self.t = now
        return v

    def _aux_median(self, a):
        """The median of this balance and the two before it (this one until there are
        three): a single outlier never becomes the estimate; a real change one poll late."""
        p1 = self.aux_prev1
        p2 = self.aux_prev2
        self.aux_prev2 = p1
        self.aux_prev1 = a
        if p1 is None or p2 is None:
            return a
        if p1 > p2:
            p1, p2 = p2, p1
        return p1 if a < p1 else (p2 if a > p2 else a)

    def ok(self, *names):
        """True when every named derived value is known and not stale."""
        for k in names:
            if self.v[k] is None or self.q[k] >= Q_STALE:
                return False
        return True

    def snapshot(self, now=None, points=True):
        """Plain dict for status/telemetry: derived values, their quality and, with
        points, every device point as [value, age_ms, quality]."""
        if now is None:
            now = clock.site_ms()
        out = {}
        for k in DERIVED:
            out[k] = self.v[k]
        qd = {}
        for k in DERIVED:
            qd[k] = QNAMES[self.q[k]]
        out["q"] = qd
        if self.packs is not None:
            out["multi"] = self.packs.status()
        if points:
            pd = {}
            for d in self.devices:
                dd = {}
                for name in d.values:
                    val, age, qq = self.point(d, name, now)
                    dd[name] = [val, age, QNAMES[qq]]
                pd[d.name] = dd
            out["points"] = pd
        return out
