# Fallback dispatch: one PCS active-power setpoint (W, + = discharge) from ordered rules,
# integer fixed point, no I/O. Rules, highest priority first (docs/dispatch.md):
#   1 safety: SOC window (with hysteresis), BMS ccl/dcl, PCS rating, ramp rate
#   2 zero export (aim export_margin_w into import), PV curtailment when the battery can't
#   3 grid import cap (peak shaving); raised until sunset when the plan says it cannot
#     be held (the battery would empty and the next surge import in full)
#   4 critical reserve: SOC kept above what the IT load needs for reserve_s
#   5 PV self-consumption / peak levelling: a plan level T from the compute forecast
#   6 the cloud schedule window (target SOC, power bounds) until it expires
# Rules 1-4 narrow an interval [lo, hi]; 5-6 pick the wanted value inside it.
# step() allocates nothing on the heap (MicroPython heap_lock test): ints only, all
# state set up in __init__, reason strings are interned constants.
# Every intermediate stays below 2**30: inputs are clamped to +-WMAX (10 MW), energies to
# 10 MWh, and products that could be larger go through _mdiv (split multiply).
from edgefw.fx import div_trunc, clamp, mdiv as _mdiv, frac as _frac
from edgefw.planner import Planner, LoadForecast, energy_wh, KCI_FAST, MAX_FC  # noqa: F401
from edgefw.planner import TSAT as _TSAT
from edgefw.learnt import Learnt
from edgefw.precharge import Precharge
from edgefw.rules import Interval, R_SOC, R_BMS, R_RAMP, R_EXPORT, R_CAP, R_RESERVE  # noqa: F401

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WMAX = const(10000000)      # |W| clamp for every power input (10 MW)
WHMAX = const(10000000)     # battery up to 10 MWh
MAX_WINDOWS = const(48)     # as Victron Dynamic ESS
# schedule/forecast times are kept as offsets from the step time at which they arrived,
# saturated at +-8.5 years: whatever the cloud sends, every time difference in step stays
# a small int (< 2**30 with now_s within +-2**29 of the epoch; planner.TSAT)

# reason strings (interned constants: assigning them does not allocate)
R_SHAVE = "shave"
R_SELF = "self"
R_HOLD = "hold"
R_PRECHARGE = "precharge"
R_SCHEDULE = "schedule"
R_DEADBAND = "deadband"
R_IDLE = "idle"

# name: (lo, hi, default or None if it depends on others)
_SPEC = (
    ("battery_wh", 1, WHMAX, 10000),
    ("soc_init_cpct", 0, 10000, 5000),
    ("soc_min_cpct", 0, 10000, 1000),
    ("soc_max_cpct", 0, 10000, 9500),
    ("reserve_s", 0, 86400, 900),
    ("pcs_w", 1, WMAX, 5000),
    ("charge_max_w", 0, WMAX, None),
    ("discharge_max_w", 0, WMAX, None),
    ("eta_c_milli", 500, 1000, 950),
    ("eta_d_milli", 500, 1000, 950),
    ("grid_cap_w", 0, WMAX, WMAX),
    ("export_margin_w", 0, 1000000, None),
    ("ramp_w_s", 1, WMAX, None),
    ("deadband_w", 0, 1000000, None),
    ("hyst_cpct", 0, 1000, 100),
    ("horizon_s", 900, 86400, 86400),
    ("pv_persist_s", 0, 86400, 3600),
    ("precharge_s", 900, 86400, 21600),  # grid precharge starts at most this far ahead
    ("plan_s", 1, 3600, 60),
    ("link_lost_s", 0, 100000000, None),
    ("energy_persist_s", 10, 86400, 900),
    ("pv_peak_w", 0, WMAX, 0),           # clear-sky PV peak; 0 = no PV expectation
    ("pv_expect_milli", 0, 1000, 800),   # share of it the plan counts on
    ("pv_next_milli", 0, 1000, 1000),    # share of the learnt index for a day not begun
    ("sun_rise_s", 0, 86400, 23400),     # local time of day (s) PV starts / ends
    ("sun_set_s", 0, 86400, 70200),
    ("tz_s", -50400, 50400, 28800),      # local time = now_s + tz_s (China: +8 h)
    ("peak_window_s", 60, 3600, 900),    # the billed peak: highest mean import over this
    ("peak_period_days", 0, 366, 31),    # billing period (days; 0: never reset)
    ("plan_learnt", 0, 2, 1),            # the plan uses the learnt aux and PV profiles
                                         # (1), and IT past the forecast (2); learnt.py
    ("learn_persist_s", 60, 86400, 3600),  # the learnt profiles are saved this often
    ("grid_factor_g_kwh", 0, 1000, None),
    ("grid_factor_dg_kwh", 0, 10000, None),
)
_OTHER = ("export_allowed", "grid_cap_hard", "region", "schedule", "name", "note", "tariff")


def _isint(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_params(site):
    """The checked site params (check_params) or ValueError naming the first problem:
    for callers that cannot go on without them (the dispatcher, the eval)."""
    p, errs = check_params(site)
    if errs:
        raise ValueError(errs[0])
    return p


def check_params(site):
    """Check the site section (also the scenario site JSON) like every config validator:
    -> (a new dict with every default filled in, [every "site.<field>: problem"]). Never
    raises; a bad field takes its default so the checks after it still run."""
    errs = []
    if site is None:
        site = {}
    if not isinstance(site, dict):
        errs.append("site: must be an object")
        site = {}
    for k in site:
        if k not in _OTHER and not [1 for s in _SPEC if s[0] == k]:
            errs.append("site.%s: unknown field (typo?)" % k)
    p = {}
    for name, lo, hi, dflt in _SPEC:
        v = site.get(name)
        if v is not None and not _isint(v):
            errs.append("site.%s: %r is not an integer" % (name, v))
            v = None
        elif v is not None and (v < lo or v > hi):
            errs.append("site.%s: %d out of range %d..%d" % (name, v, lo, hi))
            v = None
        # + 0: a default from the constant tuple _SPEC is a ROM long int in a frozen
        # image (ints beyond -0x2000..0x1FFF) and every op in step() on it would
        # allocate; the sum is a small int. lo/hi are only compared (no allocation).
        p[name] = v if v is not None else None if dflt is None else dflt + 0
    _derived(p)
    if p["soc_min_cpct"] >= p["soc_max_cpct"]:
        errs.append("site.soc_min_cpct: %d must be below soc_max_cpct %d"
                    % (p["soc_min_cpct"], p["soc_max_cpct"]))
    if p["sun_set_s"] <= p["sun_rise_s"]:
        errs.append("site.sun_set_s: %d must be after sun_rise_s %d"
                    % (p["sun_set_s"], p["sun_rise_s"]))
    # grid_cap_hard true: grid_cap_w is a contract limit, never raised (planner.py)
    for k in ("export_allowed", "grid_cap_hard"):
        v = site.get(k, False)
        if not isinstance(v, bool):
            errs.append("site.%s: %r is not true/false" % (k, v))
            v = False
        p[k] = v
    _others(site, p, errs)
    return p, errs


def _derived(p):
    """Defaults that follow from other fields."""
    pcs = p["pcs_w"]
    if p["charge_max_w"] is None:
        p["charge_max_w"] = pcs
    if p["discharge_max_w"] is None:
        p["discharge_max_w"] = pcs
    if p["export_margin_w"] is None:
        # Sungrow-style: aim 1 % of the ESS rating into import
        p["export_margin_w"] = max(20, pcs // 100)
    if p["ramp_w_s"] is None:
        p["ramp_w_s"] = max(1, pcs // 10)
    if p["deadband_w"] is None:
        p["deadband_w"] = p["export_margin_w"] // 2


def _others(site, p, errs):
    """region (and its grid factor), schedule, tariff, name and note."""
    reg = site.get("region", "national")
    if not isinstance(reg, str):
        errs.append("site.region: %r is not text" % (reg,))
        reg = "national"
    try:
        from edgefw import energy
        p["grid_factor_dg_kwh"] = energy.grid_factor(reg, p["grid_factor_g_kwh"],
                                                     p["grid_factor_dg_kwh"])
    except ImportError:  # pragma: no cover - energy.py missing on a trimmed image
        p["grid_factor_dg_kwh"] = p["grid_factor_dg_kwh"] or 5306
    except ValueError as e:
        errs.append(str(e))
    p["region"] = reg
    for k in ("schedule", "name", "note"):
        if k in site:
            p[k] = site[k]
    if "schedule" in p:
        try:
            _windows(p["schedule"], "site.schedule")
        except ValueError as e:
            errs.append(str(e))
    if site.get("tariff") is not None:
        from edgefw import tariff
        t, terrs = tariff.validate(site["tariff"], "site.tariff", p["export_allowed"])
        errs.extend(terrs)
        p["tariff"] = t


def _wh(w, s):
    """Wh of w W (>= 0) for s seconds (0..86400)."""
    if s > 3600:
        return _mdiv(w, div_trunc(s, 60), 60)
    return _mdiv(w, s, 3600)


def _windows(ws, field):
    """Validate schedule windows; returns parallel int lists."""
    if not isinstance(ws, list):
        raise ValueError("%s: must be a list of windows" % field)
    if len(ws) > MAX_WINDOWS:
        raise ValueError("%s: %d windows, at most %d" % (field, len(ws), MAX_WINDOWS))
    out = []
    for i in range(len(ws)):
        w = ws[i]
        f = "%s[%d]" % (field, i)
        if not isinstance(w, dict):
            raise ValueError("%s: must be an object" % f)
        for k in w:
            if k not in ("t0", "t1", "soc_cpct", "pmin_w", "pmax_w", "aim_w", "exp"):
                raise ValueError("%s.%s: unknown field" % (f, k))
        for k in ("t0", "t1"):
            if not _isint(w.get(k)):
                raise ValueError("%s.%s: missing or not an integer" % (f, k))
        if w["t1"] <= w["t0"]:
            raise ValueError("%s.t1: must be after t0" % f)
        soc = w.get("soc_cpct")
        if soc is not None and (not _isint(soc) or soc < 0 or soc > 10000):
            raise ValueError("%s.soc_cpct: %r not an integer 0..10000" % (f, soc))
        pmin = w.get("pmin_w", -WMAX)
        pmax = w.get("pmax_w", WMAX)
        for k, v in (("pmin_w", pmin), ("pmax_w", pmax)):
            if not _isint(v) or v < -WMAX or v > WMAX:
                raise ValueError("%s.%s: %r not an integer within +-%d" % (f, k, v, WMAX))
        if pmin > pmax:
            raise ValueError("%s.pmin_w: %d above pmax_w %d" % (f, pmin, pmax))
        aim = w.get("aim_w")
        if aim is not None and (not _isint(aim) or aim < 0 or aim > 1000000):
            raise ValueError("%s.aim_w: %r not an integer 0..1000000" % (f, aim))
        exp = w.get("exp")
        if exp is not None and not _isint(exp):
            raise ValueError("%s.exp: not an integer" % f)
        out.append((w["t0"], w["t1"], -1 if soc is None else soc, pmin, pmax, exp,
                    -1 if aim is None else aim))
    return out


def _trel(t, base):
    """t (any int, may be long) as an offset from base, saturated at +-_TSAT."""
    return clamp(t - base, -_TSAT, _TSAT)


def _min(a, b):
    return a if a < b else b


def _max(a, b):
    return a if a > b else b


def floor_cpct(p, it_w):
    """SOC (0.01 %) below which the IT load can no longer ride through reserve_s."""
    e = _wh(clamp(it_w, 0, WMAX), p["reserve_s"])
    e = _mdiv(e, 1000, p["eta_d_milli"])
    extra = _frac(e, p["battery_wh"]) if e < p["battery_wh"] else 10000
    return _min(10000, p["soc_min_cpct"] + extra)


def headroom(p, soc_cpct, pv_w, it_w, aux_w, dcl_w=None):
    """W of new compute load the node can take from PV + storage without grid import:
    (now, sustained for 1 h). p: validated params. The reserve for the IT load is kept."""
    soc = clamp(soc_cpct, 0, 10000)
    load = clamp(it_w, 0, WMAX) + clamp(aux_w, 0, WMAX)
    sur = clamp(pv_w, 0, WMAX) - load
    dmax = _min(p["discharge_max_w"], p["pcs_w"])
    if dcl_w is not None:
        dmax = _min(dmax, clamp(dcl_w, 0, WMAX))
    fl = floor_cpct(p, it_w)
    if soc <= fl:
        dmax = 0
        e = 0
    else:
        e = _mdiv(energy_wh(p["battery_wh"], soc - fl), p["eta_d_milli"], 1000)
    now = _max(0, sur + dmax)
    h1 = _max(0, sur + _min(dmax, e))   # e Wh over 1 h = e W
    return now, _min(now, h1)


class Schedule:
    """The cloud schedule windows (parallel int lists, times as offsets from base_s, the
    step time they arrived at) and the window in force."""

    def __init__(self):
        self.n = 0
        self.t0 = [0] * MAX_WINDOWS
        self.t1 = [0] * MAX_WINDOWS
        self.soc = [0] * MAX_WINDOWS     # target SOC (cpct), -1: none
        self.pmin = [0] * MAX_WINDOWS
        self.pmax = [0] * MAX_WINDOWS
        self.aim = [0] * MAX_WINDOWS     # zero-export aim inside the window, -1: the site's
        self.exp = [0] * MAX_WINDOWS
        self.base_s = 0
        self.rel_s = 0                   # the last find()'s time, as an offset from base_s

    def set(self, windows, exp, base_s):
        ws = _windows(windows, "schedule")
        if exp is not None and not _isint(exp):
            raise ValueError("schedule.exp: not an integer")
        for i in range(len(ws)):
            w = ws[i]
            self.t0[i] = _trel(w[0], base_s)
            self.t1[i] = _trel(w[1], base_s)
            self.soc[i] = w[2]
            self.pmin[i] = w[3]
            self.pmax[i] = w[4]
            self.aim[i] = w[6]
            e = w[5] if w[5] is not None else exp
            self.exp[i] = _trel(w[1] if e is None else e, base_s)
        self.base_s = base_s
        self.n = len(ws)

    def find(self, now_s):
        """Index of the window in force at now_s (first match), -1 if none."""
        rw = clamp(now_s - self.base_s, -_TSAT, _TSAT)
        self.rel_s = rw
        for i in range(self.n):
            if self.t0[i] <= rw < self.t1[i] and rw < self.exp[i]:
                return i
        return -1

    def want(self, wi, want, net, m, soc, hyst, bat_wh, eta_c):
        """6: the wanted setpoint inside window wi: toward its target SOC (charging from
        PV surplus first, from the grid at the rate that reaches it by t1), within its
        power bounds. m: the import aim; want: the local rules' setpoint."""
        tgt = self.soc[wi]
        if tgt >= 0:
            sur = net - m if net < m else 0
            if soc < tgt - (hyst >> 1):
                e = _mdiv(energy_wh(bat_wh, tgt - soc), 1000, eta_c)
                left = _max(1, div_trunc(self.t1[wi] - self.rel_s, 60))   # 0 < . <= 2**29
                if left > 10000:
                    left = 10000
                need = _min(WMAX, _mdiv(_min(e, 10000000), 60, left))
                want = _min(sur, -need)
            elif soc > tgt + (hyst >> 1):
                want = net - m
            else:
                want = _min(sur, 0)
        return clamp(want, self.pmin[wi], self.pmax[wi])


class PeakMeter:
    """The peak already set this billing period: highest mean import over peak_window_s
    (a precharge charges no higher than it or the plan level)."""

    def __init__(self, p):
        self.window_s = p["peak_window_s"]
        self.period_s = p["peak_period_days"] * 86400   # <= 31.6e6 s
        self.tz_s = p["tz_s"]
        self.peak_w = 0          # peak so far (W)
        self.mean_w = 0          # running mean import of the present window (W)
        self.n = 0               # samples in it
        self.window = 0          # index of the present window (since the caller's epoch)
        self.period = 0          # index of the present billing period

    def update(self, now, grid_w):
        if self.period_s > 0:
            q = div_trunc(now + self.tz_s, self.period_s)
            if q != self.period:
                self.period = q
                self.peak_w = 0
        w = div_trunc(now, self.window_s)
        if w != self.window:
            if self.n > 0 and self.mean_w > self.peak_w:
                self.peak_w = self.mean_w
            self.window = w
            self.mean_w = 0
            self.n = 0
        if grid_w is None:
            return
        n = self.n + 1
        if n > 10000:
            n = 10000
        self.n = n
        self.mean_w += div_trunc(clamp(grid_w, 0, WMAX) - self.mean_w, n)


class Dispatcher:
    def __init__(self, params):
        p = validate_params(params)
        self.p = p
        # params (the ones step() reads, as ints)
        self.export_ok = p["export_allowed"]
        self.margin_w = p["export_margin_w"]
        self.deadband_w = p["deadband_w"]
        self.hyst = p["hyst_cpct"]
        self.plan_s = p["plan_s"]
        self.tol_w = _max(10, div_trunc(p["pcs_w"], 200))
        self.bat_wh = p["battery_wh"]
        self.eta_c = p["eta_c_milli"]
        # the grid-meter bias is a small correction
        self.bias_max_w = div_trunc(_min(p["discharge_max_w"], p["pcs_w"]), 10)
        # control state (every attribute step() touches exists from here on: no dict growth)
        self.first = True
        self.t = 0
        self.sp = 0              # last setpoint (the ramp starts there)
        self.floor = p["soc_min_cpct"]   # reserve SOC (cpct) for the IT load now
        self.floor_it = 0            # the IT load it was computed for
        self.bias = 0            # learnt grid-meter bias (W)
        self.calm = 0            # steps in a row with steady inputs and setpoint (bias gate)
        self.net1 = 0            # last step's modelled net load and the setpoint before it
        self.sp1 = 0
        self.curt = 0
        self.t_plan = 0
        self.replan = True
        self.bounds = Interval(p)    # rules 1-4: the interval [lo, hi]
        # rules 5-6: the wanted value and why
        self.want = 0
        self.want_why = R_HOLD
        # outputs
        self.curtail_w = 0
        self.reason = R_IDLE
        self.sp_w = 0
        self.level_w = 0
        self.window = -1         # index of the schedule window in force at the last step
        # plan state and measurements
        self.plan = Planner(p)
        self.pre = Precharge(p)      # the grid precharge episode the plan schedules
        self.peak = PeakMeter(p)
        # per time of day, what this site's IT load, aux load and PV were (learnt always,
        # persisted by the app; the plan uses them with site.plan_learnt)
        self.learnt = Learnt(p["learn_persist_s"])
        # inputs from the cloud
        self.schedule = Schedule()
        self.forecast = LoadForecast()
        # rule 5b, time-of-use arbitrage: only with a site tariff (none: today's rules)
        self.tou = None
        if "tariff" in p:
            from edgefw import tariff
            self.tou = tariff.TouRule(p, self.plan)
        self.tou_cfg = self.tou      # the configured one, back when the cloud's expires
        self.tou_until = None        # the cloud's tariff's expiry (site s)
        if "schedule" in p:
            self.set_schedule(p["schedule"])

    # ---- inputs from the cloud / tracker (may allocate; not in the control step) ----

    def set_schedule(self, windows, exp=None):
        """windows: [{"t0","t1","soc_cpct"?,"pmin_w"?,"pmax_w"?,"aim_w"?,"exp"?}], site s.
        A window is followed while t0 <= now < t1 and now < its exp (or `exp`).
        Times more than 2**28 s (8.5 years) from the last step time saturate there."""
        self.schedule.set(windows, exp, self.t)
        self.replan = True

    def set_tariff(self, t, exp):
        """A tariff from the cloud (tariff.validate'd) in force until exp (site s), then
        the configured one (or none) again; t None: the configured one now."""
        self.tou = self.tou_cfg
        self.tou_until = None
        if t is not None and exp > self.t:
            from edgefw import tariff
            p = dict(self.p)
            p["tariff"] = t
            self.tou = tariff.TouRule(p, self.plan)
            self.tou_until = _min(exp, self.t + _TSAT)      # stays a small int
        self.replan = True

    def set_forecast(self, t0, step_s, load_w, exp, pv_w=None, aux_w=None):
        """Compute-load (IT) forecast: load_w[k] W for [t0 + k*step_s, ...), valid until exp;
        optional PV and aux forecasts on the same steps (the plan takes them over the
        learnt profiles where they reach, until exp)."""
        if not _isint(step_s) or step_s < 60 or step_s > 3600:
            raise ValueError("forecast.step_s: %r not an integer 60..3600" % (step_s,))
        if not _isint(t0) or not _isint(exp):
            raise ValueError("forecast.t0/exp: must be integers (site s)")
        for k, v in (("load_w", load_w), ("pv_w", pv_w), ("aux_w", aux_w)):
            if not isinstance(v, (list, tuple)) and (k == "load_w" or v is not None):
                raise ValueError("forecast.%s: must be a list of W" % k)
        self.forecast.set(t0, step_s, load_w, exp, self.t, pv_w, aux_w)
        self.replan = True

    def track(self, sp_w, curtail_w=0):
        """Tell the dispatcher what the PCS/PV really got when something else (the cloud)
        set it, so the ramp starts from there and the meter bias does not learn the gap."""
        self.sp = clamp(sp_w, -WMAX, WMAX)
        self.curt = clamp(curtail_w, 0, WMAX)
        self.sp_w = self.sp

    def cap_w(self):
        """The import cap in force: grid_cap_w, or the level it was raised to (until
        sunset or a full battery) when the plan showed it could not be held."""
        return self.plan.cap_w

    def peak_w(self):
        """The highest window-mean import measured this billing period (W)."""
        return self.peak.peak_w

    def grid_charge(self):
        """True while the plan precharges from the grid (rule 5)."""
        return self.plan.grid_charge

    # ---- the control step -----------------------------------------------------------

    def _net_load(self, net, sp0, grid_w, first):
        # grid meter vs model: slowly learn a bias (unmetered load, meter offset). Low
        # gain, and only once the model inputs and the setpoint have been steady for two
        # steps: a meter that lags a load step or a setpoint jump by a step or two must
        # not be read as a bias (it would push the next setpoint into export).
        dn = net - self.net1
        ds = sp0 - self.sp1
        thr = self.margin_w
        if first or dn > thr or -dn > thr or ds > thr or -ds > thr:
            self.calm = 0
        elif self.calm < 2:
            self.calm += 1
        self.net1 = net
        self.sp1 = sp0
        if grid_w is not None and self.calm >= 2:
            g = clamp(grid_w, -WMAX, WMAX)
            r = g - (net + self.curt - sp0) - self.bias
            if r > self.deadband_w or -r > self.deadband_w:
                self.bias = clamp(self.bias + div_trunc(r, 4), -self.bias_max_w, self.bias_max_w)
        return clamp(net + self.bias, -2 * WMAX, 2 * WMAX)

    def _reserve(self, it, soc, first):
        # 4 critical reserve: the floor follows the IT load (re-computed when it moves)
        if self.replan or first or it - self.floor_it > self.tol_w or \
                self.floor_it - it > self.tol_w:
            self.floor = floor_cpct(self.p, it)
            self.floor_it = it
        self.bounds.reserve(soc, self.floor)

    def _local_want(self, net, soc):
        # 5 local rule: shave above the plan level T, absorb surplus PV, hold in between
        T = self.plan.level_w
        if soc < self.floor + 2 * self.hyst and self.plan.spill == 0:
            # near the floor, no PV spill ahead: keep it for loads above the peak already set
            T = _max(T, _min(self.peak.peak_w, self.plan.cap_w))   # (docs/dispatch.md rule 5)
        if self.pre.on:
            self.want = self.pre.want(net)
            self.want_why = R_PRECHARGE if self.want < 0 else R_SHAVE
        elif net > T:
            self.want = net - T
            self.want_why = R_SHAVE
        elif self.bounds.reserve_low and net < T:
            self.want = net - T
            self.want_why = R_PRECHARGE
        elif net < self.margin_w:
            self.want = net - self.margin_w
            self.want_why = R_SELF
        else:
            self.want = 0
            self.want_why = R_HOLD

    def _pick(self, sp0, db, first):
        # pick inside [lo, hi]; deadband: keep the old setpoint if it is close and allowed
        b = self.bounds
        lo = b.lo
        hi = b.hi
        want = self.want
        if want < lo:
            self.reason = b.lo_why
            return lo
        if want > hi:
            self.reason = b.hi_why
            return hi
        self.reason = self.want_why
        if lo <= sp0 <= hi and not first:
            d = want - sp0
            if -db <= d <= db:
                if d:
                    self.reason = R_DEADBAND
                return sp0
        return want

    def step(self, now_s, pv_w, it_w, aux_w, grid_w, soc_cpct, ccl_w, dcl_w):
        pv = clamp(pv_w, 0, WMAX)
        it = clamp(it_w, 0, WMAX)
        aux = clamp(aux_w, 0, WMAX)
        soc = clamp(soc_cpct, 0, 10000)
        first = self.first
        dt = 1 if first else clamp(now_s - self.t, 0, 86400)
        sp0 = self.sp
        self.peak.update(now_s, grid_w)
        self.learnt.learn(self.plan.profile.tod(now_s), pv, it, aux)
        net = self._net_load(it + aux - pv, sp0, grid_w, first)
        self.bounds.safety(soc, clamp(ccl_w, 0, WMAX), clamp(dcl_w, 0, WMAX), dt, sp0)

        # the cloud schedule window in force (followed in rule 6). Its aim_w replaces
        # export_margin_w inside it: a cloud that knows the load will hold (the seed's 2 h
        # job on PV + storage) may ask for no import at all
        wi = self.schedule.find(now_s)
        self.window = wi
        m = self.margin_w
        db = self.deadband_w
        if wi >= 0 and self.schedule.aim[wi] >= 0:
            m = self.schedule.aim[wi]
            # the setpoint deadband keeps the site default's relation to the aim (half
            # of it): the grid wanders in [aim, aim + deadband] (m >= 0: plain shift)
            db = _min(db, m >> 1)
        curt = 0
        if not self.export_ok:
            curt = self.bounds.zero_export(net, m, pv)
        self.bounds.cap(net, self.plan.cap_w)
        self._reserve(it, soc, first)

        # plan level (periodic, or at once after a new forecast/schedule)
        if first or self.replan or now_s - self.t_plan >= self.plan_s:
            self.plan.plan(now_s, pv, it, aux, soc, self.floor, self.forecast,
                           self.peak.peak_w, first, self.learnt)
            self.pre.plan(self.plan, soc, self.floor, self.peak.peak_w)
            self.level_w = self.plan.level_w
            self.t_plan = now_s
            self.replan = False
        self._local_want(net, soc)
        if self.tou_until is not None and now_s >= self.tou_until:
            self.tou = self.tou_cfg      # the cloud's tariff expired
            self.tou_until = None
        if self.tou is not None:
            self.tou.want(self, now_s, net, soc)
        if wi >= 0:
            self.want = self.schedule.want(wi, self.want, net, m, soc, self.hyst,
                                           self.bat_wh, self.eta_c)
            self.want_why = R_SCHEDULE
        sp = self._pick(sp0, db, first)
        if curt:
            self.reason = R_EXPORT
        self.sp = sp
        self.sp_w = sp
        self.curt = curt
        self.curtail_w = curt
        self.t = now_s
        self.first = False
        return sp
