"""Bundled scenarios (scenarios/<name>.csv + .json: 1-minute PV, IT and aux profiles of one
day plus the site's dispatch parameters) as a simulated site and a gateway config, and
the recording site that keeps the physical truth at every physics step."""
import csv
import json
import os

from edgegw.simsite import SimSite
from edgegw.vgw import REPO, site_config

SCENARIOS = os.path.join(REPO, "scenarios")
DAY0 = 1782000000   # 2026-06-21 00:00 UTC, a fixed day: runs are repeatable
# scenario keys that are not dispatch parameters of the gateway's "site" section
_NOT_SITE = ("soc_init_cpct", "schedule", "link_lost_s", "name", "note")
# A 250 kWh / 100 kW site is a high-voltage pack: 180 cells in series (540-621 V) keeps
# pack current (about 185 A at 100 kW) inside what the Seplos registers can show (i_ca is
# s16 in 0.01 A: +-327 A; v_cv u16 in 0.01 V: 655 V)
CELLS = 180
PACK_V_MIN = CELLS * 3.0
PACK_R_MOHM = 40


class Scenario:
    def __init__(self, name):
        base = os.path.join(SCENARIOS, name)
        with open(base + ".json") as f:
            self.meta = json.load(f)
        self.name = name
        self.pv, self.it, self.aux = [], [], []
        with open(base + ".csv", newline="") as f:
            r = csv.reader(f)
            next(r)
            for row in r:
                if not row:
                    continue
                t = int(row[0])
                if t >= 86400:
                    break  # one day: SimSite repeats a breakpoint profile daily
                self.pv.append((t, int(row[1])))
                self.it.append((t, int(row[2])))
                self.aux.append((t, int(row[3])))
        self.site = {k: v for k, v in self.meta.items() if k not in _NOT_SITE}

    def at(self, prof, sod):
        """Profile value (W) at second of day sod, interpolated like SimSite."""
        from edgegw.simsite import profile
        return profile(getattr(self, prof))(sod)

    def sim(self, start_s, soc_cpct=None, cls=None, **kw):
        """A SimSite started at DAY0 + start_s (second of day) with this site's battery
        and PCS: BMS current limits sized so the PCS rating, not the BMS, binds."""
        m = self.meta
        args = dict(t0=DAY0 + start_s, pv=self.pv, it=self.it, aux=self.aux,
                    battery_wh=m["battery_wh"], soc_cpct=m.get("soc_init_cpct", 5000)
                    if soc_cpct is None else soc_cpct, pcs_w=m["pcs_w"],
                    ramp_w_s=m.get("ramp_w_s", 10000), eta_c_milli=m.get("eta_c_milli", 950),
                    eta_d_milli=m.get("eta_d_milli", 950),
                    cells=CELLS, pack_r_mohm=PACK_R_MOHM, max_charge_a=int(m["charge_max_w"] / PACK_V_MIN) + 1,
                    max_discharge_a=int(m["discharge_max_w"] / PACK_V_MIN) + 1)
        args.update(kw)
        return (cls or RecSite)(**args)

    def config(self, device_id="hil-gw", period_ms=1000, control=None, safety=None,
               link=None, status_s=0, baud=None, **sections):
        m = self.meta
        lim = {"pcs_charge_max_w": m["charge_max_w"], "pcs_discharge_max_w": m["discharge_max_w"],
               "soc_min_cpct": m.get("soc_min_cpct", 1000),
               "soc_max_cpct": m.get("soc_max_cpct", 10000)}
        cfg = site_config(period_ms=period_ms, timeout_ms=50, site=dict(self.site), limits=lim,
                          control=dict(control or {}), safety=dict(safety or {"clean_s": 10}),
                          **sections)
        cfg["device_id"] = device_id
        cfg["status_s"] = status_s
        if link is not None:
            cfg["link"] = link
        if baud:
            for b in cfg["buses"]:
                b["baud"] = baud
        return cfg

    def schedule(self, day0=DAY0):
        """The scenario's cloud schedule windows in site seconds (unix)."""
        out = []
        for w in self.meta.get("schedule") or []:
            w = dict(w)
            for k in ("t0", "t1", "exp"):
                if k in w:
                    w[k] += day0
            out.append(w)
        return out


# columns of RecSite.rec
T, GRID, PV, IT, AUX, BAT, SOC, PSET, CCL, PVAV, PVLIM = range(11)


def with_pv_inverter(cfg, keep_meter=False, name="pvinv", slave=5, bus="bus0"):
    """cfg with a PV inverter (role pv_inverter, map sunspec_pv) on `bus`, polled like the
    other devices; the PV meter goes unless keep_meter (without one the inverter's p_w is
    the site's PV, with one the meter counts and the inverter is only limited). The
    simulated inverter's rating is the site's pv_inv_w."""
    devs = [d for d in cfg["devices"] if keep_meter or d["role"] != "pv_meter"]
    period = max(d.get("period_ms", 1000) for d in devs)
    devs.append({"name": name, "role": "pv_inverter", "map": "sunspec_pv", "slave": slave,
                 "bus": bus, "period_ms": period})
    return dict(cfg, devices=devs)


class RecSite(SimSite):
    """SimSite that records (t, grid_w, pv_w, it_w, aux_w, bat_w, soc_cpct, p_set_w, ccl_w,
    pv_avail_w, pv_lim_w) after every physics step: the truth a revenue meter on the grid
    connection would see (ccl_w: the charge power the BMS allows, its current limit x pack
    voltage; pv_w what the PV inverter produces, pv_avail_w what the panels offer, pv_lim_w
    the inverter's limit in force, None when off)."""

    def __init__(self, *a, **kw):
        self.rec_every = kw.pop("rec_every", 0.0)   # site s between samples (0 = every step)
        self.rec = []
        super().__init__(*a, **kw)
        self._rec_t = None

    def step(self, dt):
        super().step(dt)
        with self.lock:
            if self.frozen:
                return
            if self._rec_t is not None and self.t - self._rec_t < self.rec_every:
                return
            self._rec_t = self.t
            self.rec.append((self.t, self.grid_w, self.pv_w, self.it_w, self.aux_w, self.bat_w,
                             self.soc_cpct, self.p_set_w, self.ccl_a() * self.pack_v(),
                             self.pv_avail_w, self.pv_limit_w()))

    def window(self, t0, t1):
        with self.lock:
            return [r for r in self.rec if t0 <= r[T] < t1]


def energy_wh(rows, col, sign=1):
    """Wh of max(0, sign * rows[col]) integrated over the sample times."""
    e = 0.0
    for a, b in zip(rows, rows[1:]):
        v = sign * a[col]
        if v > 0:
            e += v * (b[T] - a[T]) / 3600.0
    return e


def runs_beyond(rows, pred):
    """[(t_start, duration_s, worst value row)] of consecutive samples where pred(row)."""
    out = []
    start = None
    worst = None
    for i, r in enumerate(rows):
        if pred(r):
            if start is None:
                start = i
                worst = r
            elif abs(r[GRID]) > abs(worst[GRID]):
                worst = r
        elif start is not None:
            out.append((rows[start][T], r[T] - rows[start][T], worst))
            start = None
    if start is not None:
        out.append((rows[start][T], rows[-1][T] - rows[start][T], worst))
    return out
