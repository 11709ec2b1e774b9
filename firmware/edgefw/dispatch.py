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

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WMAX = const(10000000)      # |W| clamp for every power input (10 MW)
WHMAX = const(10000000)     # battery up to 10 MWh
MAX_WINDOWS = const(48)     # as Victron Dynamic ESS
MAX_FC = const(288)         # forecast points kept (24 h at 5 min)
_BLOCK = const(900)         # plan block (s)
KCI_FAST = const(8)           # plans a day that learn the PV index fast (gain 1/4, then 1/32)
# schedule/forecast times are kept as offsets from the step time at which they arrived,
# saturated at +-8.5 years: whatever the cloud sends, every time difference in step stays
# a small int (< 2**30 with now_s within +-2**29 of the epoch)
_TSAT = const(268435456)    # 2**28 s

# reason strings (interned constants: assigning them does not allocate)
R_SOC = "soc"
R_BMS = "bms"
R_RAMP = "ramp"
R_EXPORT = "export"
R_CAP = "cap"
R_RESERVE = "reserve"
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
    ("grid_factor_g_kwh", 0, 1000, None),
    ("grid_factor_dg_kwh", 0, 10000, None),
)
_OTHER = ("export_allowed", "grid_cap_hard", "region", "schedule", "name", "note")


def _isint(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_params(site):
    """Check the site section (also the scenario site JSON); returns a new dict with every
    default filled in. Raises ValueError("site.<field>: problem") on the first problem."""
    if site is None:
        site = {}
    if not isinstance(site, dict):
        raise ValueError("site: must be an object")
    known = [s[0] for s in _SPEC]
    for k in site:
        if k not in known and k not in _OTHER:
            raise ValueError("site.%s: unknown field (typo?)" % k)
    p = {}
    for name, lo, hi, dflt in _SPEC:
        v = site.get(name)
        if v is None:
            # + 0: a default from the constant tuple _SPEC is a ROM long int in a frozen
            # image (ints beyond -0x2000..0x1FFF) and every op in step() on it would
            # allocate; the sum is a small int. lo/hi are only compared (no allocation).
            p[name] = None if dflt is None else dflt + 0
            continue
        if not _isint(v):
            raise ValueError("site.%s: %r is not an integer" % (name, v))
        if v < lo or v > hi:
            raise ValueError("site.%s: %d out of range %d..%d" % (name, v, lo, hi))
        p[name] = v
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
    if p["soc_min_cpct"] >= p["soc_max_cpct"]:
        raise ValueError("site.soc_min_cpct: %d must be below soc_max_cpct %d"
                         % (p["soc_min_cpct"], p["soc_max_cpct"]))
    ea = site.get("export_allowed", False)
    if not isinstance(ea, bool):
        raise ValueError("site.export_allowed: %r is not true/false" % (ea,))
    p["export_allowed"] = ea
    # true: grid_cap_w is a contract limit, never raised (see _raise_cap)
    hc = site.get("grid_cap_hard", False)
    if not isinstance(hc, bool):
        raise ValueError("site.grid_cap_hard: %r is not true/false" % (hc,))
    p["grid_cap_hard"] = hc
    reg = site.get("region", "national")
    if not isinstance(reg, str):
        raise ValueError("site.region: %r is not text" % (reg,))
    try:
        from edgefw import energy
        p["grid_factor_dg_kwh"] = energy.grid_factor(reg, p["grid_factor_g_kwh"],
                                                     p["grid_factor_dg_kwh"])
    except ImportError:  # pragma: no cover - energy.py missing on a trimmed image
        p["grid_factor_dg_kwh"] = p["grid_factor_dg_kwh"] or 5306
    p["region"] = reg
    if p["sun_set_s"] <= p["sun_rise_s"]:
        raise ValueError("site.sun_set_s: %d must be after sun_rise_s %d"
                         % (p["sun_set_s"], p["sun_rise_s"]))
    for k in ("schedule", "name", "note"):
        if k in site:
            p[k] = site[k]
    if "schedule" in p:
        _windows(p["schedule"], "site.schedule")
    return p


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


def energy_wh(bat_wh, cpct):
    """Wh held between 0 and cpct (>= 0) of a bat_wh battery."""
    if cpct <= 0:
        return 0
    return _mdiv(bat_wh, cpct, 10000)


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


class Dispatcher:
    def __init__(self, params):
        p = validate_params(params)
        self.p = p
        self._bat = p["battery_wh"]
        self._smin = p["soc_min_cpct"]
        self._smax = p["soc_max_cpct"]
        self._cmax = _min(p["charge_max_w"], p["pcs_w"])
        self._dmax = _min(p["discharge_max_w"], p["pcs_w"])
        self._etac = p["eta_c_milli"]
        self._etad = p["eta_d_milli"]
        self._cap = p["grid_cap_w"]
        # effective import cap: the configured one, raised (ratchet, within a day) to the
        # lowest level the plan says is holdable once it says the cap is not; back to the
        # configured cap at sunset and when the battery is full
        self._ecap = p["grid_cap_w"]
        self._kfc = 0            # plan blocks covered by the load forecast
        self._dark = True        # no PV expected now (the plan is then trustworthy)
        self._xok = p["export_allowed"]
        self._margin = p["export_margin_w"]
        self._ramp = p["ramp_w_s"]
        # ramp limit off once dt is long enough to sweep the whole range
        self._ramp_full_s = div_trunc(2 * p["pcs_w"], p["ramp_w_s"]) + 1
        self._db = p["deadband_w"]
        self._hyst = p["hyst_cpct"]
        self._pvp = div_trunc(p["pv_persist_s"], 60)
        self._plan_s = p["plan_s"]
        self._tol = _max(10, div_trunc(p["pcs_w"], 200))
        self._res_s = p["reserve_s"]
        # state (every attribute step() touches exists from here on: no dict growth)
        self._first = True
        self._t = 0
        self._sp = 0
        self._dis_ok = True
        self._ch_ok = True
        self._res_low = False
        self._bias = 0
        self._calm = 0           # steps in a row with steady inputs and setpoint (bias gate)
        self._net1 = 0           # last step's modelled net load and the setpoint before it
        self._sp1 = 0
        self._curt = 0
        self._level = 0          # plan level T: import the battery shaves down to (W)
        self._gc = False         # grid (pre)charging needed to hold the plan level
        self._tplan = 0
        self._replan = True
        self._fl = self._smin
        self._free = 0
        self._kfail = 0
        self._kclip = 0
        self._low = 0            # lowest energy before the battery first fills (_feasible)
        self._ks = 0             # _feasible holds _ts in blocks before _ks, T after
        self._ts = 0
        self._jit = _max(1, div_trunc(p["precharge_s"], _BLOCK))
        self._nb = _max(1, div_trunc(p["horizon_s"], _BLOCK))
        self._pvx = p["pv_peak_w"]
        # clear-sky index the plan counts on (0.01 %): starts at pv_expect_milli, then
        # follows what the PV really gives against the clear-sky curve (dust, haze, season)
        self._kci = p["pv_expect_milli"] * 10
        self._rise = p["sun_rise_s"]
        self._day = p["sun_set_s"] - p["sun_rise_s"]
        self._tz = p["tz_s"]
        self._bmax = div_trunc(self._dmax, 10)   # the grid-meter bias is a small correction
        self._pf = [0] * self._nb
        # pv_next_milli < 1000: the level counts on less PV for a day not seen yet (_pf);
        # the plan on the learnt index (_po) is made too: never less precharge than it,
        # no grid charge that would only make that day spill PV (_plan)
        self._pvn = p["pv_next_milli"]
        self._po = [0] * self._nb if self._pvn < 1000 else self._pf
        self._pu = self._pf          # the profile _feasible walks
        self._clip = 0               # energy the last _feasible run spilled
        self._knxt = 0               # plan blocks before the daylight not seen yet
        self._tod1 = 0               # local time of day at the last plan
        self._gc0 = False
        self._tg = 0             # grid import the precharge fills up to (W)
        self._learn = 0          # plans today that learnt the PV index (up to KCI_FAST)
        self._hard = p["grid_cap_hard"]
        # charge -> later discharge efficiency, 0.001 units
        self._keff = div_trunc(p["eta_c_milli"] * p["eta_d_milli"], 1000)
        self._lastit = 0
        # the peak already set this billing period: highest mean import over peak_window_s
        # measured (a precharge charges no higher than it or the plan level)
        self._pkw = p["peak_window_s"]
        self._pkd = p["peak_period_days"] * 86400   # <= 31.6e6 s
        self._pk = 0             # peak so far (W)
        self._pkm = 0            # running mean import of the present window (W)
        self._pkn = 0            # samples in it
        self._pki = 0            # index of the present window (since the caller's epoch)
        self._pkp = 0            # index of the present billing period
        self.curtail_w = 0
        self.reason = R_IDLE
        self.sp_w = 0
        self.level_w = 0
        # schedule windows: parallel int lists (filled by set_schedule, read by step)
        self._nw = 0
        self._wt0 = [0] * MAX_WINDOWS
        self._wt1 = [0] * MAX_WINDOWS
        self._wsoc = [0] * MAX_WINDOWS
        self._wpmin = [0] * MAX_WINDOWS
        self._wpmax = [0] * MAX_WINDOWS
        self._waim = [0] * MAX_WINDOWS   # zero-export aim inside the window, -1: the site's
        self._wexp = [0] * MAX_WINDOWS
        self._win = -1           # index of the window in force at the last step
        self._wtb = 0            # time base of the window times (the step time they came at)
        # compute forecast
        self._nfc = 0
        self._fc = [0] * MAX_FC
        self._fct0 = 0
        self._fcstep = 900
        self._fcexp = 0
        self._ftb = 0            # time base of _fct0/_fcexp
        if "schedule" in p:
            self.set_schedule(p["schedule"])

    # ---- inputs from the cloud / tracker (may allocate; not in the control step) ----

    def set_schedule(self, windows, exp=None):
        """windows: [{"t0","t1","soc_cpct"?,"pmin_w"?,"pmax_w"?,"aim_w"?,"exp"?}], site s.
        A window is followed while t0 <= now < t1 and now < its exp (or `exp`).
        Times more than 2**28 s (8.5 years) from the last step time saturate there."""
        ws = _windows(windows, "schedule")
        if exp is not None and not _isint(exp):
            raise ValueError("schedule.exp: not an integer")
        b = self._t
        for i in range(len(ws)):
            w = ws[i]
            self._wt0[i] = _trel(w[0], b)
            self._wt1[i] = _trel(w[1], b)
            self._wsoc[i] = w[2]
            self._wpmin[i] = w[3]
            self._wpmax[i] = w[4]
            self._waim[i] = w[6]
            e = w[5] if w[5] is not None else exp
            self._wexp[i] = _trel(w[1] if e is None else e, b)
        self._wtb = b
        self._nw = len(ws)
        self._replan = True

    def set_forecast(self, t0, step_s, load_w, exp):
        """Compute-load (IT) forecast: load_w[k] W for [t0 + k*step_s, ...), valid until exp."""
        if not _isint(step_s) or step_s < 60 or step_s > 3600:
            raise ValueError("forecast.step_s: %r not an integer 60..3600" % (step_s,))
        if not _isint(t0) or not _isint(exp):
            raise ValueError("forecast.t0/exp: must be integers (site s)")
        if not isinstance(load_w, (list, tuple)):
            raise ValueError("forecast.load_w: must be a list of W")
        n = _min(len(load_w), MAX_FC)
        for i in range(n):
            v = load_w[i]
            if not _isint(v):
                raise ValueError("forecast.load_w[%d]: %r is not an integer" % (i, v))
        for i in range(n):      # all checked first: a bad list leaves the old forecast
            self._fc[i] = clamp(load_w[i], 0, WMAX)
        self._nfc = n
        b = self._t
        self._ftb = b
        self._fct0 = _trel(t0, b)
        self._fcstep = step_s
        self._fcexp = _trel(exp, b)
        self._replan = True

    def track(self, sp_w, curtail_w=0):
        """Tell the dispatcher what the PCS/PV really got when something else (the cloud)
        set it, so the ramp starts from there and the meter bias does not learn the gap."""
        self._sp = clamp(sp_w, -WMAX, WMAX)
        self._curt = clamp(curtail_w, 0, WMAX)
        self.sp_w = self._sp

    def cap_w(self):
        """The import cap in force: grid_cap_w, or the level it was raised to (until
        sunset or a full battery) when the plan showed it could not be held."""
        return self._ecap

    # ---- the plan: level T that the available energy can hold over the horizon -------
    # The horizon is cut into 15 min blocks; energies are in W x block (1 Wh = 4 Wblk)
    # so the inner loop is adds and compares only.

    def _profile(self, now, pv, it, aux):
        # now: site s (time of day); forecast times are offsets from _ftb
        # forecast net load per block: IT forecast (mean of its points in the block, else
        # persistence) + aux (persistence) - PV fading out linearly over pv_persist_s
        # (the gateway has no PV forecast)
        n = self._nb
        rf = clamp(now - self._ftb, -_TSAT, _TSAT)
        fcok = self._nfc > 0 and rf < self._fcexp
        st = self._fcstep
        m = 1 if st >= _BLOCK else div_trunc(_BLOCK, st)
        sub = _BLOCK if m == 1 else st
        pvp = self._pvp
        tod = self._tod(now)
        dark = True
        nxt = 0
        if self._pvx > 0:
            x0 = self._pv_expect(tod)
            dark = x0 == 0
            if dark and not self._dark:
                self._ecap = self._cap     # sunset: a new night, the ratchet starts over
            self._dark = dark
            if dark or tod < self._tod1:
                self._learn = 0            # a new day (also where the sun never sets)
            self._tod1 = tod
            if x0 > div_trunc(self._pvx, 10):
                # yesterday's index is yesterday's weather: the first plans of a day
                # with the sun up replace it fast, then a ~30 min average follows
                g = 32
                if self._learn < KCI_FAST:
                    self._learn += 1
                    g = 4
                r = _frac(_min(pv, x0), x0)
                self._kci = clamp(self._kci + div_trunc(r - self._kci, g), 500, 10000)
            # start of the daylight not seen yet (s from today's midnight): today's until
            # its index is learnt (before that the index is yesterday's), then tomorrow's
            nxt = self._rise if self._learn < KCI_FAST else self._rise + 86400
        self._knxt = 0
        # blocks the load forecast covers in full (the cap ratchet trusts only those)
        self._kfc = 0
        if fcok:
            x = self._fct0 + self._nfc * st - rf          # |.| < 2**29 + 1 day
            if x > 0:
                self._kfc = _min(n, div_trunc(x, _BLOCK))
        # past the end of the load forecast: its lowest point (the base load; the tracker
        # knows no jobs that far out), or the present value if lower. Not the present
        # value alone: a running job would seem to run on for the whole horizon and hold
        # the level (and the battery) back for a load that ends in the forecast.
        itx = it
        if fcok:
            for i in range(self._nfc):
                itx = _min(itx, self._fc[i])
        for k in range(n):
            tot = 0
            for j in range(m):
                v = itx
                if fcok:
                    dk = rf + k * _BLOCK + j * sub - self._fct0   # |.| < 2**29 + 1 day
                    if dk >= 0:
                        i = div_trunc(dk, st)
                        if i < self._nfc:
                            v = self._fc[i]
                tot += v
            f = div_trunc(tot, m) + aux
            # PV: the present value, handing over linearly (pv_persist_s) to the clear-sky
            # expectation (a parabola between sunrise and sunset, pv_expect_milli of peak)
            mm = k * 15 + 7              # block middle, minutes from now
            x = 0
            xo = 0
            if self._pvx > 0:
                tb = tod + mm * 60
                xo = _mdiv(self._pv_expect(tb), self._kci, 10000)
                x = xo
                if tb >= nxt and self._pvn < 1000:
                    x = _mdiv(xo, self._pvn, 1000)
                if tb < nxt:
                    self._knxt = k + 1
            if mm < pvp:
                x = _mdiv(pv, pvp - mm, pvp) + _mdiv(x, mm, pvp)
                xo = _mdiv(pv, pvp - mm, pvp) + _mdiv(xo, mm, pvp)
            self._pf[k] = f - x
            if self._pvn < 1000:
                self._po[k] = f - xo
        return fcok

    def _tod(self, now):
        # local time of day (s), folded without a bare %
        tod = now + self._tz
        if tod < 0 or tod >= 86400:
            tod = tod - div_trunc(tod, 86400) * 86400
            if tod < 0:
                tod += 86400
        return tod

    def _peak(self, now, grid_w):
        # the peak-so-far floor: window means of the measured import, reset per period
        if self._pkd > 0:
            q = div_trunc(now + self._tz, self._pkd)
            if q != self._pkp:
                self._pkp = q
                self._pk = 0
        w = div_trunc(now, self._pkw)
        if w != self._pki:
            if self._pkn > 0 and self._pkm > self._pk:
                self._pk = self._pkm
            self._pki = w
            self._pkm = 0
            self._pkn = 0
        if grid_w is None:
            return
        n = self._pkn + 1
        if n > 10000:
            n = 10000
        self._pkn = n
        self._pkm += div_trunc(clamp(grid_w, 0, WMAX) - self._pkm, n)

    def peak_w(self):
        """The highest window-mean import measured this billing period (W)."""
        return self._pk

    def _pv_expect(self, tod):
        # expected PV (W) at local time of day tod (s, may run past midnight)
        while tod >= 86400:
            tod -= 86400
        x = tod - self._rise
        if x <= 0 or x >= self._day:
            return 0
        u = _frac(x, self._day)            # 0..10000
        return _mdiv(self._pvx, div_trunc(u * (10000 - u), 2500), 10000)

    def _feasible(self, T, n, e0, emax, grid):
        # hold the grid at T: discharge above it, store PV surplus (and in the first
        # `grid` blocks charge from the grid below T: 0 none, n all). Returns the W x block
        # discharged, -1 if the energy above the floor runs out (block in _kfail, n if it
        # lasts); _clip: the energy spilled so far (battery full).
        self._kfail = n
        self._clip = 0
        e = e0
        need = 0
        low = e0                 # lowest energy before the battery first fills up
        clip = 0                 # energy the plan would have to spill (battery full)
        dmax = self._dmax
        cmax = self._cmax
        k2 = self._keff
        pf = self._pu
        T1 = T
        ks = self._ks
        if ks > 0:
            T = self._ts          # the self-consumption level before the first fill
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
                    self._kfail = k
                    self._clip = clip
                    return -1
                if clip == 0 and e < low:
                    low = e
            elif e < emax:
                c = -f if f < 0 else 0
                if k < grid and T - f > c:
                    c = T - f
                if c > cmax:
                    c = cmax
                if c > 0:
                    ck = c // 1000          # c > 0: plain floor
                    e += ck * k2 + ((c - ck * 1000) * k2) // 1000
                    if e > emax:
                        if clip == 0:
                            self._kclip = k
                        if clip < emax:
                            clip += e - emax
                        e = emax
        # what can go to self-consumption now: no more than would be spilled later, and
        # never below the lowest point before that (the plan's peaks stay covered)
        self._free = _min(low, clip)
        self._clip = clip
        self._low = low
        return need

    def _bisect(self, lo, hi, n, e0, emax, grid):
        # smallest T in [lo, hi] that stays feasible (hi assumed feasible)
        while hi - lo > self._tol:
            mid = lo + ((hi - lo) >> 1)   # hi > lo: non-negative shift
            if self._feasible(mid, n, e0, emax, grid) >= 0:
                hi = mid
            else:
                lo = mid
        return hi

    def _raise_cap(self, n, soc, T):
        # The cap cannot be held through the near part of the horizon even with grid
        # charging: emptying the battery to hold it leaves the next surge unshaved (it
        # imports in full), so hold the lowest level that is holdable instead. Only with
        # a load forecast and when the plan's PV is solid: at night (no PV in it) or once
        # the clear-sky index is learnt from today's sun (a dusty morning: mixed_3day
        # day 3 imported 87.5 kW at 09:00 holding 60 kW to an empty battery).
        # Only upwards within a day (a noisy plan must not make it hunt); the cap rule
        # outranks the reserve, so the energy down to soc_min counts. T: a holdable level
        # (the plan's, >= this).
        sm = self._smin
        e0 = 0
        if soc > sm:
            e0 = _mdiv(energy_wh(self._bat, soc - sm), self._etad, 1000) * 4
        emax = _mdiv(energy_wh(self._bat, self._smax - sm), self._etad, 1000) * 4
        c = self._ecap
        n = _min(n, self._kfc)
        if n > 0 and self._feasible(c, n, e0, emax, n) < 0 and self._kfail < self._jit:
            c = self._bisect(c, T, n, e0, emax, n)
            if c > self._ecap + self._db:
                self._ecap = c

    def _self_level(self, T, n, e0, emax, lo):
        self._ks = self._kclip
        hi = T
        while hi - lo > self._tol:
            mid = lo + ((hi - lo) >> 1)           # hi > lo: non-negative shift
            self._ts = mid
            if self._feasible(T, n, e0, emax, 0) >= 0:
                hi = mid
            else:
                lo = mid
        self._ks = 0
        return hi

    def _choose(self, n, e0, emax, fcok):
        # the plan level on the profile _pu; sets _gc0 when it needs grid charging
        lo = self._margin
        hi = lo
        pf = self._pu
        for k in range(n):
            if pf[k] > hi:
                hi = pf[k]
        T = self._bisect(lo, hi, n, e0, emax, 0) if hi > lo else lo
        self._gc0 = False
        if T > lo:
            # would charging from the grid below the level allow a lower one? Only for a
            # hard need (the cap) or a forecast ramp: the gateway has no PV forecast, so a
            # pessimistic plan must not pull grid energy on its own
            Tc = self._bisect(lo, T, n, e0, emax, n)
            big = _max(self._tol + self._db, div_trunc(self._dmax, 20))
            # the cap counts as a hard need within `big` of it too: a plan that holds the
            # cap by less than that has no room for forecast error
            if T > self._cap - big or (fcok and T - Tc > big):
                # just in time: only when the shortfall is near (PV may still come first)
                # (when the energy runs short without the grid: at Tc, or just below T
                # where grid charging does not lower the level but the cap is near)
                self._feasible(_min(Tc, T - self._tol), n, e0, emax, 0)
                if self._kfail < self._jit:
                    # charge up to the plan's level; for the cap (a hard need) with all
                    # the room under the cap: the same energy (the precharge stops when
                    # the plan holds without it) arrives sooner, so a plan that was too
                    # hopeful finds more stored (mixed_3day 83.8 -> 86.4 % of the LP's
                    # peak cut; held out 87.0 -> 87.6 % mean). The shave level stays Tc.
                    self._tg = Tc
                    if T > self._cap - big:
                        self._tg = _max(Tc, self._ecap)
                    T = Tc
                    # a real need only: the plan at Tc does not hold without the grid
                    # (review 5: a flag set while Tc held made the pessimist's level flip)
                    self._gc0 = self._feasible(Tc, n, e0, emax, 0) < 0
        return T

    def _plan(self, now, pv, it, aux, soc):
        n = self._nb
        fcok = self._profile(now, pv, it, aux)
        fl = self._fl
        e0 = 0
        if soc > fl:
            e0 = _mdiv(energy_wh(self._bat, soc - fl), self._etad, 1000) * 4
        emax = _mdiv(energy_wh(self._bat, _max(0, self._smax - fl)), self._etad, 1000) * 4
        if soc >= self._smax - self._hyst:
            self._ecap = self._cap
        self._pu = self._pf
        T = self._choose(n, e0, emax, fcok)
        if self._pvn < 1000:
            # pessimism about a day not seen yet keeps energy, and may want grid charging
            # the day the plan hopes for (the learnt index, _po) does not. Never less
            # precharge than that day's plan; and no pessimist's grid charge that would
            # only make that day spill PV.
            gcp = self._gc0
            tgp = self._tg
            self._pu = self._po
            To = self._choose(n, e0, emax, fcok)
            use_o = False
            if self._gc0:
                if gcp:
                    T = _max(T, To)
                    self._tg = _max(tgp, self._tg)
                else:
                    T = To
                    use_o = True
            elif gcp:
                # the pessimist's charge, before the day not seen yet: does it only make
                # the hoped-for day spill (more than that day's own plan spills)?
                self._feasible(To, n, e0, emax, 0)
                c0 = self._clip
                self._feasible(T, n, e0, emax, self._knxt)
                if self._clip > c0 + self._tol * 4:       # tol W for an hour
                    T = To
                    use_o = True
                else:
                    self._gc0 = True
                    self._tg = tgp
            self._pu = self._po if use_o else self._pf
        gc = self._gc0
        lo = self._margin
        if T > self._ecap and fcok and (self._dark or self._learn >= KCI_FAST) and not self._hard:
            # on the learnt-index day: a cap raised for the pessimist's dull day would
            # stay raised all day when the day turns out sunny (review 5)
            pu = self._pu
            self._pu = self._po
            self._raise_cap(n, soc, T)
            self._pu = pu
        if self._tg > _max(T, self._pk):
            self._tg = _max(T, self._pk)   # a precharge never sets a new peak
        self._kclip = 0
        # always run: it also measures the spill the self-consumption rule below spreads
        # (review 5: short-circuited, that rule read what an earlier run left)
        r = self._feasible(T, n, e0, emax, 0)
        self._gc = gc and r < 0
        if not self._gc and self._free > 0 and self._kclip > 0:
            # the battery would fill up and spill PV later: until then, the lowest level
            # that still lasts to the fill with T after it (bisection): energy that would
            # be spilled goes to self-consumption now, the later peaks stay covered
            T = self._self_level(T, n, e0, emax, lo)
        self._pu = self._pf

        # hysteresis on the level: a small re-plan does not move the setpoint
        d = T - self._level
        if d > self._db or -d > self._db or self._first:
            self._level = T
        self.level_w = self._level

    # ---- the control step -----------------------------------------------------------

    def step(self, now_s, pv_w, it_w, aux_w, grid_w, soc_cpct, ccl_w, dcl_w):
        pv = clamp(pv_w, 0, WMAX)
        it = clamp(it_w, 0, WMAX)
        aux = clamp(aux_w, 0, WMAX)
        soc = clamp(soc_cpct, 0, 10000)
        ccl = clamp(ccl_w, 0, WMAX)
        dcl = clamp(dcl_w, 0, WMAX)
        first = self._first
        dt = 1 if first else clamp(now_s - self._t, 0, 86400)
        sp0 = self._sp
        self._peak(now_s, grid_w)

        # grid meter vs model: slowly learn a bias (unmetered load, meter offset). Low
        # gain, and only once the model inputs and the setpoint have been steady for two
        # steps: a meter that lags a load step or a setpoint jump by a step or two must
        # not be read as a bias (it would push the next setpoint into export).
        net = it + aux - pv
        dn = net - self._net1
        ds = sp0 - self._sp1
        thr = self._margin
        if first or dn > thr or -dn > thr or ds > thr or -ds > thr:
            self._calm = 0
        elif self._calm < 2:
            self._calm += 1
        self._net1 = net
        self._sp1 = sp0
        if grid_w is not None and self._calm >= 2:
            g = clamp(grid_w, -WMAX, WMAX)
            r = g - (net + self._curt - sp0) - self._bias
            if r > self._db or -r > self._db:
                self._bias = clamp(self._bias + div_trunc(r, 4), -self._bmax, self._bmax)
        net = clamp(net + self._bias, -2 * WMAX, 2 * WMAX)

        # 1 safety: SOC window with hysteresis, BMS and PCS limits, ramp
        h = self._hyst
        if soc <= self._smin:
            self._dis_ok = False
        elif soc >= self._smin + h:
            self._dis_ok = True
        if soc >= self._smax:
            self._ch_ok = False
        elif soc <= self._smax - h:
            self._ch_ok = True
        lo_r = R_BMS
        hi_r = R_BMS
        lo0 = -_min(self._cmax, ccl)
        hi0 = _min(self._dmax, dcl)
        if not self._ch_ok:
            lo0 = 0
            lo_r = R_SOC
        if not self._dis_ok:
            hi0 = 0
            hi_r = R_SOC
        if dt >= 60:
            # slow loops: do not run past the SOC window before the next step (the last
            # interval is the best guess of the next one)
            dm = _min(div_trunc(dt, 60), 10000)
            e = energy_wh(self._bat, soc - self._smin) if soc > self._smin else 0
            x = _mdiv(_mdiv(_min(e, WHMAX), self._etad, 1000), 60, dm)
            if x < hi0:
                hi0 = x
                hi_r = R_SOC
            e = energy_wh(self._bat, self._smax - soc) if soc < self._smax else 0
            x = _mdiv(_mdiv(_min(e, WHMAX), 1000, self._etac), 60, dm)
            if x < -lo0:
                lo0 = -x
                lo_r = R_SOC
        lo0_r = lo_r
        if dt >= self._ramp_full_s:
            lo = lo0
            hi = hi0
        else:
            rr = self._ramp * dt
            lo = clamp(sp0 - rr, lo0, hi0)
            hi = clamp(sp0 + rr, lo0, hi0)
            if lo > lo0:
                lo_r = R_RAMP
            if hi < hi0:
                hi_r = R_RAMP

        # the cloud schedule window in force (first match; followed in rule 6). Its aim_w
        # replaces export_margin_w inside it: a cloud that knows the load will hold (the
        # seed's 2 h job on PV + storage) may ask for no import at all
        wi = -1
        rw = clamp(now_s - self._wtb, -_TSAT, _TSAT)
        for i in range(self._nw):
            if self._wt0[i] <= rw < self._wt1[i] and rw < self._wexp[i]:
                wi = i
                break
        self._win = wi
        m = self._margin
        db = self._db
        if wi >= 0 and self._waim[wi] >= 0:
            m = self._waim[wi]
            # the setpoint deadband keeps the site default's relation to the aim (half
            # of it): the grid wanders in [aim, aim + deadband], so aim 0 follows the load
            # every step (m >= 0: plain shift)
            db = _min(db, m >> 1)

        # 2 zero export: sp <= net - m keeps grid >= m (the aim); else curtail PV.
        # Zero export outranks the ramp: a cut of discharge (or more charge) that stops
        # export is not ramp-limited, only the safety limits lo0 bind (night: no PV to
        # curtail). The ramp still limits moves toward export and any charge beyond need.
        curt = 0
        if not self._xok:
            x = net - m
            if x < lo:
                if x > lo0:
                    lo = x
                    lo_r = R_EXPORT
                else:
                    lo = lo0
                    lo_r = lo0_r
                curt = _min(pv, lo - x)
                hi = lo
                hi_r = R_EXPORT
            elif x < hi:
                hi = x
                hi_r = R_EXPORT

        # 3 import cap: sp >= net - cap
        c = net - self._ecap
        if c > hi:
            lo = hi          # cap out of reach: whatever limits hi is the binding reason
            lo_r = hi_r
        elif c > lo:
            lo = c
            lo_r = R_CAP

        # 4 critical reserve (hysteresis): below it, discharge only what the cap needs
        if self._replan or first or it - self._lastit > self._tol or self._lastit - it > self._tol:
            self._fl = floor_cpct(self.p, it)
            self._lastit = it
        fl = self._fl
        if soc < fl:
            self._res_low = True
        elif soc >= fl + h:
            self._res_low = False
        if self._res_low and hi > lo:
            z = _max(lo, 0)
            if z < hi:
                hi = z
                hi_r = R_RESERVE

        # plan level (periodic, or at once after a new forecast/schedule)
        if first or self._replan or now_s - self._tplan >= self._plan_s:
            self._plan(now_s, pv, it, aux, soc)
            self._tplan = now_s
            self._replan = False
        T = self._level

        # 5 local rule: shave above T, absorb surplus PV, hold in between
        if net > T:
            want = net - T
            wr = R_SHAVE
        elif self._gc:
            want = net - self._tg
            wr = R_PRECHARGE
        elif self._res_low and net < T:
            want = net - T
            wr = R_PRECHARGE
        elif net < self._margin:
            want = net - self._margin
            wr = R_SELF
        else:
            want = 0
            wr = R_HOLD

        # 6 cloud schedule window in force (found above)
        if wi >= 0:
            tgt = self._wsoc[wi]
            if tgt >= 0:
                sur = net - m if net < m else 0
                if soc < tgt - (h >> 1):
                    e = _mdiv(energy_wh(self._bat, tgt - soc), 1000, self._etac)
                    left = _max(1, div_trunc(self._wt1[wi] - rw, 60))   # 0 < . <= 2**29
                    if left > 10000:
                        left = 10000
                    need = _min(WMAX, _mdiv(_min(e, 10000000), 60, left))
                    want = _min(sur, -need)
                elif soc > tgt + (h >> 1):
                    want = net - m
                else:
                    want = _min(sur, 0)
            want = clamp(want, self._wpmin[wi], self._wpmax[wi])
            wr = R_SCHEDULE

        # pick inside [lo, hi]; deadband: keep the old setpoint if it is close and allowed
        if want < lo:
            sp = lo
            self.reason = lo_r
        elif want > hi:
            sp = hi
            self.reason = hi_r
        else:
            sp = want
            self.reason = wr
            if lo <= sp0 <= hi and not first:
                d = want - sp0
                if -db <= d <= db:
                    sp = sp0
                    if d:
                        self.reason = R_DEADBAND
        if curt:
            self.reason = R_EXPORT
        self._sp = sp
        self.sp_w = sp
        self._curt = curt
        self.curtail_w = curt
        self._t = now_s
        self._first = False
        return sp
