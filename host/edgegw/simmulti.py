"""A simulated site with several battery packs and several PCS (issue 18 item 2).

The meters and the PV come from SimSite; the battery side is a list of packs (each its
own energy, current limits and alarm/protect bits, feeding one PCS) and a list of PCS
(each its own run / setpoint / fault / revert timer, following its setpoint with the ramp
inside its rating and the limits of its packs). A PCS's DC energy is shared over its
healthy packs by their capacity (a protected pack takes none). bat_w is the sum of the
PCS's AC power, the grid takes the balance as in SimSite; e_wh / cap_wh / p_set_w / run
are the site totals (SimSite's soc_cpct, summary() and RecSite read them).

SimDevice asks `points(role, name)` / `write(role, changes, name)` of a site with
`named = True`: the device's config name picks the pack or PCS. Pack addresses follow
the Seplos V3 rack: packs 1..N on one bus, each answers at its own slave address (the
bank master at DIP address 0, map seplos_v3_bank, is not simulated).

    site = MultiSite.from_config(cfg, soc_cpct=6000, pv=3000, it=2200)
    site.pack("b2").alarm = 1 << 2      # fault hooks per pack / PCS
    site.pcs_unit("pcs2").fault = 1 << 7
"""
from edgegw.simsite import SimSite, pcs_write

PACK_V = 51.2     # a 16-cell LFP pack at its plateau: the limits are ccl/dcl x this
CELLS = 16


class Pack:
    def __init__(self, name, wh, soc_cpct, pcs, max_a=100):
        self.name = name
        self.cap_wh = float(wh)
        self.e_wh = self.cap_wh * soc_cpct / 10000.0
        self.pcs = pcs
        self.max_a = max_a
        self.alarm = 0
        self.protect = 0
        self.dc_w = 0.0      # + = discharging (DC)

    @property
    def soc_cpct(self):
        return int(round(10000.0 * self.e_wh / self.cap_wh))

    def ccl_a(self):
        return 0.0 if self.protect or self.e_wh >= self.cap_wh else float(self.max_a)

    def dcl_a(self):
        return 0.0 if self.protect or self.e_wh <= 0.0 else float(self.max_a)


class Pcs:
    def __init__(self, name, rating_w):
        self.name = name
        self.rating = rating_w
        self.run = 0
        self.p_set_w = 0
        self.rvrt_s = 0
        self.set_t = 0.0
        self.fault = 0
        self.bat_w = 0.0


def plan(cfg, wh=10240, rating_w=5000):
    """(packs, pcs) of MultiSite from a gateway config: each bms device a pack (its
    capacity_wh, else wh; its pcs, else the first PCS), each pcs device a PCS (rating_w,
    else rating_w)."""
    devs = cfg.get("devices") or []
    pcs = [(d.get("name") or "pcs", d.get("rating_w") or rating_w)
           for d in devs if d.get("role") == "pcs"]
    first = pcs[0][0] if pcs else None
    packs = [(d.get("name") or "bms", d.get("capacity_wh") or wh, d.get("pcs") or first)
             for d in devs if d.get("role") == "bms"]
    return packs, pcs


def is_multi(cfg):
    devs = cfg.get("devices") or []
    return max(len([d for d in devs if d.get("role") == r]) for r in ("bms", "pcs")) > 1


class MultiSite(SimSite):
    named = True

    def __init__(self, packs, pcs, soc_cpct=5000, max_a=100, **kw):
        """packs: [(name, wh, pcs name)] or [(name, wh, pcs name, soc_cpct)]; pcs:
        [(name, rating_w)]; max_a: each pack's charge/discharge current limit."""
        self.packs = [Pack(p[0], p[1], p[3] if len(p) > 3 else soc_cpct, p[2], max_a)
                      for p in packs]
        self.pcs = [Pcs(*p) for p in pcs]
        kw["battery_wh"] = sum(k.cap_wh for k in self.packs) or 1.0
        kw["pcs_w"] = sum(p.rating for p in self.pcs)
        super().__init__(soc_cpct=soc_cpct, **kw)
        self._totals()

    @classmethod
    def from_config(cls, cfg, wh=10240, rating_w=5000, **kw):
        packs, pcs = plan(cfg, wh, rating_w)
        return cls(packs, pcs, **kw)

    def pcs_unit(self, name):
        for p in self.pcs:
            if p.name == name:
                return p
        raise KeyError(name)

    def pack(self, name):
        for p in self.packs:
            if p.name == name:
                return p
        raise KeyError(name)

    def _fed(self, pc):
        return [k for k in self.packs if k.pcs == pc.name]

    def _totals(self):
        self.e_wh = sum(k.e_wh for k in self.packs)
        self.p_set_w = sum(p.p_set_w for p in self.pcs)
        self.run = 1 if any(p.run for p in self.pcs) else 0
        self.bat_w = sum(p.bat_w for p in self.pcs)

    # aggregate views (RecSite's ccl column: ccl_a() x pack_v())
    def pack_v(self, i_a=0.0):
        return PACK_V

    def ccl_a(self):
        return sum(k.ccl_a() for k in self.packs)

    def dcl_a(self):
        return sum(k.dcl_a() for k in self.packs)

    def pcs_limits(self, pc):
        """(most charge W, most discharge W) the PCS can deliver now on the AC side."""
        ks = self._fed(pc)
        hi = min(pc.rating, sum(k.dcl_a() for k in ks) * PACK_V * self.eta_d)
        lo = min(pc.rating, sum(k.ccl_a() for k in ks) * PACK_V / self.eta_c)
        return lo, hi

    def _target(self, pc):
        if not pc.run or pc.fault:
            return 0.0
        if pc.rvrt_s and self.t - pc.set_t > pc.rvrt_s:
            return 0.0
        lo, hi = self.pcs_limits(pc)
        return max(-lo, min(hi, float(pc.p_set_w)))

    def step(self, dt):
        with self.lock:
            if self.frozen or dt <= 0:
                return
            self.t += dt
            lim = self.ramp * dt
            for pc in self.pcs:
                d = self._target(pc) - pc.bat_w
                pc.bat_w += max(-lim, min(lim, d))
                dc = pc.bat_w / self.eta_d if pc.bat_w >= 0 else pc.bat_w * self.eta_c
                ks = [k for k in self._fed(pc) if not k.protect]
                cap = sum(k.cap_wh for k in ks)
                for k in self._fed(pc):
                    k.dc_w = dc * k.cap_wh / cap if cap and not k.protect else 0.0
                    k.e_wh = max(0.0, min(k.cap_wh, k.e_wh - k.dc_w * dt / 3600.0))
                if not cap:
                    pc.bat_w = 0.0   # no pack left to draw from or charge into
            self._totals()
            self._balance()
            self._count(dt)

    def points(self, role, name=None):
        with self.lock:
            if role == "bms":
                return self._bms(self.pack(name))
            if role == "pcs":
                pc = self.pcs_unit(name)
                st = 7 if pc.fault else (4 if pc.run else 8)
                return {"p_w": int(round(pc.bat_w)), "u1_dv": 2300, "f_chz": 5000,
                        "state": st, "fault": pc.fault, "p_rated_w": pc.rating,
                        "soc_cpct": self.soc_cpct, "run": pc.run, "p_set_w": pc.p_set_w,
                        "rvrt_s": pc.rvrt_s}
            return SimSite.points(self, role)

    def _bms(self, k):
        i = -k.dc_w / PACK_V      # + = charging, as the Seplos reports
        cell = int(PACK_V * 1000 / CELLS)
        return {"v_cv": int(PACK_V * 100), "i_ca": int(round(i * 100)),
                "cap_rem_cah": int(k.e_wh / PACK_V * 100),
                "cap_full_cah": int(k.cap_wh / PACK_V * 100), "soc_cpct": k.soc_cpct,
                "soh_cpct": 9990, "cycles": 10, "cell_avg_mv": cell, "cell_max_mv": cell + 5,
                "cell_min_mv": cell - 5, "ccl_ca": int(k.ccl_a()) * 100,
                "dcl_ca": int(k.dcl_a()) * 100, "alarm": k.alarm, "protect": k.protect,
                "sys_state": 1 if k.dc_w > 0 else (2 if k.dc_w < 0 else 16),
                "fet": 3, "hw_fault": 0, "soc_low": 1 if k.e_wh < 0.05 * k.cap_wh else 0}

    def write(self, role, changes, name=None):
        with self.lock:
            if role != "pcs":
                return SimSite.write(self, role, changes)
            self.writes.append((self.t, name or role, dict(changes)))
            if len(self.writes) > 10000:
                del self.writes[:5000]
            pcs_write(self.pcs_unit(name), changes, self.t)
            self._totals()

    def summary(self):
        s = SimSite.summary(self)
        with self.lock:
            s["pcs"] = {p.name: {"bat_w": int(round(p.bat_w)), "p_set_w": p.p_set_w,
                                 "run": p.run} for p in self.pcs}
            s["packs"] = {k.name: {"soc_cpct": k.soc_cpct, "dc_w": int(round(k.dc_w))}
                          for k in self.packs}
        return s
