"""The simulated physical site behind the simulated Modbus devices.

PV from a profile, IT and aux loads from profiles, a battery whose SOC integrates the
DC power with charge/discharge efficiency inside the BMS current limits, a PCS that
follows its setpoint with a ramp (and falls back to 0 W when its revert timer runs out),
and a grid that takes the balance: grid_w = it_w + aux_w - pv_w - bat_w.
A PV inverter (role pv_inverter, map sunspec_pv) obeys its active-power limit: PV
production = min(available PV, lim_cpct x pv_inv_w / 10000) while lim_ena is 1 (dropped
when lim_rvrt_s > 0 and lim_cpct was not rewritten in time); the PV meter shows that
production.

Site time is seconds (float) from `t0` (unix s); step(dt) advances it. SimSite is
thread-safe: the simulated devices read `points(role)` and apply `write(role, changes)`
from their bus threads while a stepping thread advances the physics.

Profiles: a number (constant W), a callable f(t_unix_s) -> W, or a list of
(seconds_of_day, W) breakpoints interpolated linearly and repeated daily.
Fault hooks: bms_alarm / bms_protect (bitfield ints), pcs_fault, freeze().
"""
import math
import threading
import time


def pcs_write(pcs, changes, t):
    """A PCS's registers written at site time t (pcs: the SimSite itself or a simmulti.Pcs,
    both with run / p_set_w / set_t / rvrt_s)."""
    for k, v in changes.items():
        if k == "run":
            pcs.run = 1 if v else 0
        elif k == "p_set_w":
            pcs.p_set_w = int(v)
            pcs.set_t = t
        elif k == "rvrt_s":
            pcs.rvrt_s = int(v)


def clear_sky_pv(peak_w, sunrise_h=6.0, sunset_h=18.0):
    """A clear-sky-like day: sin over the daylight hours (local time = UTC here)."""
    def f(t):
        h = (t % 86400) / 3600.0
        if h <= sunrise_h or h >= sunset_h:
            return 0.0
        return peak_w * math.sin(math.pi * (h - sunrise_h) / (sunset_h - sunrise_h)) ** 1.3
    return f


def profile(p):
    """Normalise a profile spec to a callable of unix seconds."""
    if p is None:
        return lambda t: 0.0
    if callable(p):
        return p
    if isinstance(p, (int, float)):
        v = float(p)
        return lambda t: v
    pts = sorted((float(a), float(b)) for a, b in p)
    if not pts:
        return lambda t: 0.0

    def f(t):
        s = t % 86400
        if s <= pts[0][0]:
            return pts[0][1]
        for i in range(1, len(pts)):
            if s <= pts[i][0]:
                (a0, v0), (a1, v1) = pts[i - 1], pts[i]
                return v0 + (v1 - v0) * (s - a0) / (a1 - a0) if a1 > a0 else v1
        return pts[-1][1]
    return f


class SimSite:
    def __init__(self, t0=None, pv=None, it=2000, aux=300, battery_wh=10240, soc_cpct=5000,
                 cells=16, cell_min_mv=3000, cell_max_mv=3450, pack_r_mohm=20,
                 max_charge_a=100, max_discharge_a=100, pcs_w=5000, ramp_w_s=2500,
                 eta_c_milli=950, eta_d_milli=950, pv_peak_w=6000, pv_inv_w=8000):
        self.lock = threading.RLock()
        self.t = float(t0 if t0 is not None else int(time.time()))
        self.pv_f = profile(pv if pv is not None else clear_sky_pv(pv_peak_w))
        self.it_f = profile(it)
        self.aux_f = profile(aux)
        self.cap_wh = float(battery_wh)
        self.e_wh = self.cap_wh * soc_cpct / 10000.0
        self.cells = cells
        self.cell_min_mv = cell_min_mv
        self.cell_max_mv = cell_max_mv
        self.pack_r = pack_r_mohm / 1000.0
        self.max_charge_a = max_charge_a
        self.max_discharge_a = max_discharge_a
        self.pcs_w = pcs_w
        self.ramp = ramp_w_s
        self.eta_c = eta_c_milli / 1000.0
        self.eta_d = eta_d_milli / 1000.0
        # PCS state (its registers)
        self.run = 0
        self.p_set_w = 0
        self.rvrt_s = 0
        self.set_t = self.t      # site s of the last setpoint write (revert timer)
        self.pcs_fault = 0
        self.bat_w = 0.0         # AC, + = discharging
        # PV inverter state (its registers): the limit in 0.01 % of pv_inv_w
        self.pv_inv_w = pv_inv_w
        self.lim_cpct = 10000
        self.lim_ena = 0
        self.lim_rvrt_s = 0
        self.lim_t = self.t      # site s of the last lim_cpct write (revert timer)
        self.pv_avail_w = 0.0    # PV the panels offer; pv_w is what the inverter makes
        # BMS fault injection
        self.bms_alarm = 0
        self.bms_protect = 0
        self.cycles = 10
        self.frozen = False
        # meters
        self.pv_w = self.it_w = self.aux_w = self.grid_w = 0.0
        self.e = {"grid_imp": 0.0, "grid_exp": 0.0, "pv": 0.0, "it": 0.0, "aux": 0.0}
        self.writes = []         # (site t, role, {point: value}) as the devices applied them
        self._balance()

    # ---- physics ------------------------------------------------------------

    @property
    def soc_cpct(self):
        return int(round(10000.0 * self.e_wh / self.cap_wh))

    def pack_v(self, i_a=0.0):
        f = max(0.0, min(1.0, self.e_wh / self.cap_wh))
        cell = self.cell_min_mv + (self.cell_max_mv - self.cell_min_mv) * f
        return self.cells * cell / 1000.0 + i_a * self.pack_r  # charging raises V

    def ccl_a(self):
        # taper the charge current above 90 % SOC, 0 when full or protected
        if self.bms_protect:
            return 0.0
        f = self.e_wh / self.cap_wh
        if f >= 1.0:
            return 0.0
        if f > 0.9:
            return self.max_charge_a * (1.0 - f) / 0.1
        return float(self.max_charge_a)

    def dcl_a(self):
        if self.bms_protect:
            return 0.0
        f = self.e_wh / self.cap_wh
        if f <= 0.0:
            return 0.0
        if f < 0.1:
            return self.max_discharge_a * f / 0.1
        return float(self.max_discharge_a)

    def _target(self):
        if not self.run or self.pcs_fault:
            return 0.0
        if self.rvrt_s and self.t - self.set_t > self.rvrt_s:
            return 0.0  # the setpoint was not refreshed in time: fall back
        v = self.pack_v()
        hi = min(self.pcs_w, self.dcl_a() * v * self.eta_d)
        lo = -min(self.pcs_w, self.ccl_a() * v / self.eta_c)
        return max(lo, min(hi, float(self.p_set_w)))

    def step(self, dt):
        """Advance dt site seconds."""
        with self.lock:
            if self.frozen or dt <= 0:
                return
            self.t += dt
            tgt = self._target()
            d = tgt - self.bat_w
            lim = self.ramp * dt
            self.bat_w += max(-lim, min(lim, d))
            if not self.run or self.pcs_fault:
                self.bat_w = 0.0 if abs(self.bat_w) < lim else self.bat_w
            # DC energy: discharge draws more than delivered, charge stores less
            if self.bat_w >= 0:
                de = -self.bat_w / self.eta_d * dt / 3600.0
            else:
                de = -self.bat_w * self.eta_c * dt / 3600.0
            self.e_wh = max(0.0, min(self.cap_wh, self.e_wh + de))
            if self.e_wh <= 0.0 and self.bat_w > 0:
                self.bat_w = 0.0
            if self.e_wh >= self.cap_wh and self.bat_w < 0:
                self.bat_w = 0.0
            self._balance()
            self._count(dt)

    def _count(self, dt):
        # the site's energy counters over dt s at the present powers (lock held)
        h = dt / 3600.0
        if self.grid_w > 0:
            self.e["grid_imp"] += self.grid_w * h
        else:
            self.e["grid_exp"] -= self.grid_w * h
        self.e["pv"] += self.pv_w * h
        self.e["it"] += self.it_w * h
        self.e["aux"] += self.aux_w * h

    def pv_limit_w(self):
        """The inverter's limit in force (W), None when it is off or reverted."""
        if not self.lim_ena:
            return None
        if self.lim_rvrt_s and self.t - self.lim_t > self.lim_rvrt_s:
            return None
        return self.pv_inv_w * self.lim_cpct / 10000.0

    def _balance(self):
        self.pv_avail_w = max(0.0, float(self.pv_f(self.t)))
        lim = self.pv_limit_w()
        self.pv_w = self.pv_avail_w if lim is None else min(self.pv_avail_w, lim)
        self.it_w = max(0.0, float(self.it_f(self.t)))
        self.aux_w = max(0.0, float(self.aux_f(self.t)))
        self.grid_w = self.it_w + self.aux_w - self.pv_w - self.bat_w

    def start_clock(self, speed=1, tick_s=0.01):
        """Advance the physics in a thread at `speed` x real time; returns a
        threading.Event that stops it when set."""
        stop = threading.Event()

        def run():
            last = time.monotonic()
            while not stop.wait(tick_s):
                now = time.monotonic()
                self.step((now - last) * speed)
                last = now
        threading.Thread(target=run, name="simsite-clock", daemon=True).start()
        return stop

    def freeze(self, on=True):
        """Stop time in the physics (values hold still for exact comparisons)."""
        with self.lock:
            self.frozen = on

    # ---- the devices' view --------------------------------------------------

    def points(self, role):
        """Canonical point values (ints, contract units) a device of this role shows."""
        with self.lock:
            if role in ("grid_meter", "pv_meter", "load_meter", "aux_meter"):
                p, e_imp, e_exp = {
                    "grid_meter": (self.grid_w, self.e["grid_imp"], self.e["grid_exp"]),
                    "pv_meter": (self.pv_w, self.e["pv"], 0.0),
                    "load_meter": (self.it_w, self.e["it"], 0.0),
                    "aux_meter": (self.aux_w, self.e["aux"], 0.0)}[role]
                pw = int(round(p))
                return {"p_w": pw, "p1_w": pw, "p2_w": 0, "p3_w": 0, "u1_dv": 2300, "u2_dv": 2300,
                        "u3_dv": 2300, "i1_ma": int(abs(p) * 1000 / 230), "i2_ma": 0, "i3_ma": 0,
                        "f_chz": 5000, "pf_milli": 1000, "e_imp_wh": int(e_imp),
                        "e_exp_wh": int(e_exp), "e_tot_wh": int(e_imp + e_exp)}
            if role == "bms":
                if self.bat_w >= 0:
                    dc = self.bat_w / self.eta_d
                else:
                    dc = self.bat_w * self.eta_c
                v = self.pack_v()
                i = -dc / v  # + = charging, as the Seplos reports
                v = self.pack_v(i)
                f = self.e_wh / self.cap_wh
                cell = int(v * 1000 / self.cells)
                return {"v_cv": int(round(v * 100)), "i_ca": int(round(i * 100)),
                        "cap_rem_cah": int(self.e_wh / v * 100),
                        "cap_full_cah": int(self.cap_wh / v * 100),
                        "soc_cpct": self.soc_cpct, "soh_cpct": 9990, "cycles": self.cycles,
                        "cell_avg_mv": cell, "cell_max_mv": cell + 5, "cell_min_mv": cell - 5,
                        "t_avg_cdc": 2505, "t_max_cdc": 2605, "t_min_cdc": 2405,
                        "t_env_cdc": 2305, "t_mos_cdc": 2805,
                        **{"cell%d_mv" % k: cell + (k % 3) - 1 for k in range(1, 17)},
                        **{"t_cell%d_cdc" % k: 2405 + 50 * (k % 3) for k in range(1, 5)},
                        "ccl_ca": int(self.ccl_a()) * 100, "dcl_ca": int(self.dcl_a()) * 100,
                        "alarm": self.bms_alarm, "protect": self.bms_protect,
                        "sys_state": 1 if self.bat_w > 0 else (2 if self.bat_w < 0 else 16),
                        "fet": 3, "hw_fault": 0,
                        "soc_low": 1 if f < 0.05 else 0}
            if role == "pcs":
                if self.pcs_fault:
                    st = 7
                elif self.run:
                    st = 4
                else:
                    st = 8
                return {"p_w": int(round(self.bat_w)), "u1_dv": 2300, "f_chz": 5000,
                        "state": st, "fault": self.pcs_fault, "p_rated_w": self.pcs_w,
                        "soc_cpct": self.soc_cpct, "run": self.run, "p_set_w": self.p_set_w,
                        "rvrt_s": self.rvrt_s}
            if role == "pv_inverter":
                lim = self.pv_limit_w()
                return {"p_w": int(round(self.pv_w)),
                        "state": 5 if lim is not None and self.pv_avail_w > lim else 4,
                        "wmax_w": self.pv_inv_w, "lim_cpct": self.lim_cpct,
                        "lim_ena": self.lim_ena, "lim_rvrt_s": self.lim_rvrt_s}
            return {}

    def write(self, role, changes):
        """A device applied a write: the PCS takes run / p_set_w / rvrt_s, the PV
        inverter lim_cpct / lim_ena / lim_rvrt_s (its production follows at once)."""
        with self.lock:
            self.writes.append((self.t, role, dict(changes)))
            if len(self.writes) > 10000:
                del self.writes[:5000]
            if role == "pv_inverter":
                for k, v in changes.items():
                    if k == "lim_cpct":
                        self.lim_cpct = int(v)
                        self.lim_t = self.t
                    elif k == "lim_ena":
                        self.lim_ena = 1 if v else 0
                    elif k == "lim_rvrt_s":
                        self.lim_rvrt_s = int(v)
                self._balance()
                return
            if role != "pcs":
                return
            pcs_write(self, changes, self.t)

    def summary(self):
        with self.lock:
            return {"t": int(self.t), "grid_w": int(round(self.grid_w)),
                    "pv_w": int(round(self.pv_w)), "it_w": int(round(self.it_w)),
                    "aux_w": int(round(self.aux_w)), "bat_w": int(round(self.bat_w)),
                    "soc_cpct": self.soc_cpct, "p_set_w": self.p_set_w, "run": self.run,
                    "pv_avail_w": int(round(self.pv_avail_w)),
                    "pv_limit_w": None if self.pv_limit_w() is None
                    else int(round(self.pv_limit_w()))}
