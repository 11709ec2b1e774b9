# Several battery packs and/or PCS (docs/firmware.md "Several packs and PCS"): the site
# values the controller sees are the aggregate of the healthy packs (fresh SOC, voltage
# and limits, no alarm or protection bit): SOC energy-weighted (capacity_wh), charge and
# discharge limits summed, cell min/max across packs. A silent pack drops out (the
# limits shrink) instead of tripping the site; with none left, the values go stale and
# the interlock trips as with one BMS. Per PCS: available (fault 0 and fresh, and with
# packs assigned, one of them healthy) and its own limits (rating_w, its packs' ccl/dcl),
# which pcsgroup.py splits the setpoint by. site.py uses this only with more than one
# bms or pcs: a one-pack site computes exactly as before.
from edgefw.fx import frac, mdiv

_OK = 0       # site.Q_OK (not imported: site imports this module)
_DERIVED = 1
_STALE = 2
_NONE = 3
BIG_W = 10000000   # a PCS without rating_w: no limit of its own
PACK_PTS = ("soc_cpct", "v_cv", "ccl_ca", "dcl_ca")


class Packs:
    def __init__(self, site, va_w):
        self.site = site
        self.va_w = va_w      # site.va_w (0.01 A x 0.01 V -> W)
        self.bms = site.roles.get("bms") or []
        self.pcs = site.roles.get("pcs") or []
        self.state = {}     # pack name -> "ok" / "stale" / "alarm" / "none"
        self.avail = {}     # pcs name -> True when it can take a setpoint
        self.chg = [0] * len(self.pcs)   # per PCS (config order): most charge W now
        self.dis = [0] * len(self.pcs)   # most discharge W now
        self.cell_min_mv = None
        self.cell_max_mv = None

    def pack_state(self, d, now):
        s = self.site
        for name in ("alarm", "protect"):
            if d.values.get(name):
                return "alarm"
        for name in PACK_PTS:
            v, _, q = s.point(d, name, now)
            if v is None:
                return "none"
            if q != _OK:
                return "stale"
        return "ok"

    def pcs_ok(self, d, now):
        if not d.period_ms:
            return True  # write-only: nothing to tell it is not there
        f = getattr(d, "polls", None)  # as safety._polled: test devices poll everything
        pt = "fault" if f is None or f("fault") else "p_w"
        v, _, q = self.site.point(d, pt, now)
        return v is not None and q == _OK and not (pt == "fault" and v)

    def bat_w(self, now):
        """(W, quality) of the battery: the fresh PCS's AC power summed (a silent PCS is
        stopped by the interlock: counted as 0 W, quality derived), else the healthy
        packs' DC power (V x I). (None, Q_NONE) when nothing is known."""
        s = self.site
        if self.pcs:
            tot, fresh, n = 0, 0, 0
            for d in self.pcs:
                v, _, q = s.point(d, "p_w", now)
                if v is not None:
                    n += 1
                    if q == _OK:
                        tot += v
                        fresh += 1
            if n == 0:
                return None, _NONE
            if fresh == 0:
                return tot, _STALE
            return tot, (_OK if fresh == len(self.pcs) else _DERIVED)
        va_w = self.va_w
        tot, n = 0, 0
        for d in self.bms:
            if self.state.get(d.name) == "ok" and d.values.get("i_ca") is not None:
                tot += va_w(-d.values["i_ca"], d.values["v_cv"])
                n += 1
        return (tot, _OK) if n else (None, _NONE)

    def update(self, now):
        """Pack states, then the site's soc_cpct / ccl_w / dcl_w and per-PCS limits."""
        va_w = self.va_w
        s = self.site
        v, q = s.v, s.q
        st = self.state
        e = cap = ccl = dcl = 0
        es = caps = 0         # over every pack with a SOC (none healthy: stale values)
        cmin = cmax = None
        for d in self.bms:
            k = self.pack_state(d, now)
            st[d.name] = k
            w = d.cap_wh or 100   # no capacities: equal weights
            soc = d.values.get("soc_cpct")
            if soc is not None:
                es += mdiv(w, soc, 10000)
                caps += w
            if k != "ok":
                continue
            e += mdiv(w, soc, 10000)
            cap += w
            vv = d.values["v_cv"]
            ccl += va_w(d.values["ccl_ca"], vv)
            dcl += va_w(d.values["dcl_ca"], vv)
            a = d.values.get("cell_min_mv")
            if a is not None and (cmin is None or a < cmin):
                cmin = a
            a = d.values.get("cell_max_mv")
            if a is not None and (cmax is None or a > cmax):
                cmax = a
        self.cell_min_mv, self.cell_max_mv = cmin, cmax
        if cap:
            v["soc_cpct"], q["soc_cpct"] = frac(e, cap), _OK
        elif caps:
            v["soc_cpct"], q["soc_cpct"] = frac(es, caps), _STALE
        else:
            v["soc_cpct"], q["soc_cpct"] = None, _NONE
        if not self.bms:
            ccl = dcl = BIG_W
        cc, dd = self._pcs_limits(now)
        if self.pcs:
            ccl = ccl if ccl < cc else cc
            dcl = dcl if dcl < dd else dd
        qq = _OK if cap else (_STALE if caps else _NONE)
        for k, x in (("ccl_w", ccl), ("dcl_w", dcl)):
            v[k] = x if qq != _NONE else None
            q[k] = qq

    def _pcs_limits(self, now):
        """Per PCS its limits now (0 when not available); returns their sums."""
        va_w = self.va_w
        cc = dd = 0
        for i in range(len(self.pcs)):
            p = self.pcs[i]
            r = p.rating_w or BIG_W
            c = dl = r
            mapped = False
            pc = pd = 0
            for d in self.bms:
                if d.feeds == p.name:
                    mapped = True
                    if self.state.get(d.name) == "ok":
                        pc += va_w(d.values["ccl_ca"], d.values["v_cv"])
                        pd += va_w(d.values["dcl_ca"], d.values["v_cv"])
            ok = self.pcs_ok(p, now) and (not mapped or self._any_ok(p.name))
            self.avail[p.name] = ok
            if mapped:
                c = c if c < pc else pc
                dl = dl if dl < pd else pd
            if not ok:
                c = dl = 0
            self.chg[i] = c
            self.dis[i] = dl
            cc += c
            dd += dl
        return cc, dd

    def _any_ok(self, pname):
        for d in self.bms:
            if d.feeds == pname and self.state.get(d.name) == "ok":
                return True
        return False

    def status(self):
        out = {"packs": dict(self.state), "cell_min_mv": self.cell_min_mv,
               "cell_max_mv": self.cell_max_mv}
        pc = {}
        for i in range(len(self.pcs)):
            p = self.pcs[i]
            pc[p.name] = {"ok": self.avail.get(p.name, False), "chg_w": self.chg[i],
                          "dis_w": self.dis[i]}
        out["pcs"] = pc
        return out
