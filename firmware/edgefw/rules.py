# Dispatch rules 1-4 (docs/dispatch.md): each narrows the interval [lo, hi] the setpoint
# (W, + = discharge) must lie in and names why a bound binds. Integer fixed point, no
# I/O, nothing allocated per step: the interval is preallocated state of Interval.
from edgefw.fx import div_trunc, clamp, mdiv
from edgefw.planner import Battery, energy_wh

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WHMAX = const(10000000)     # battery up to 10 MWh

# reason strings (interned constants: assigning them does not allocate)
R_SOC = "soc"
R_BMS = "bms"
R_RAMP = "ramp"
R_EXPORT = "export"
R_CAP = "cap"
R_RESERVE = "reserve"


def _min(a, b):
    return a if a < b else b


class Interval:
    def __init__(self, p):
        # params (validated dict, see dispatch.validate_params)
        self.bat = Battery(p)
        self.ramp_w_s = p["ramp_w_s"]
        # ramp limit off once dt is long enough to sweep the whole range
        self.ramp_full_s = div_trunc(2 * p["pcs_w"], p["ramp_w_s"]) + 1
        # state: hysteresis flags
        self.dis_ok = True       # SOC window
        self.ch_ok = True
        self.reserve_low = False
        # the interval and why its bounds bind
        self.lo = 0
        self.hi = 0
        self.lo_why = R_BMS
        self.hi_why = R_BMS
        self.lo0 = 0             # the safety limit below (zero export outranks the ramp)
        self.lo0_why = R_BMS

    def safety(self, soc, ccl, dcl, dt, sp0):
        """1 safety: SOC window with hysteresis, BMS and PCS limits, ramp from sp0."""
        h = self.bat.hyst
        if soc <= self.bat.soc_min:
            self.dis_ok = False
        elif soc >= self.bat.soc_min + h:
            self.dis_ok = True
        if soc >= self.bat.soc_max:
            self.ch_ok = False
        elif soc <= self.bat.soc_max - h:
            self.ch_ok = True
        lo_r = R_BMS
        hi_r = R_BMS
        lo0 = -_min(self.bat.charge_max_w, ccl)
        hi0 = _min(self.bat.discharge_max_w, dcl)
        if not self.ch_ok:
            lo0 = 0
            lo_r = R_SOC
        if not self.dis_ok:
            hi0 = 0
            hi_r = R_SOC
        if dt >= 60:
            # slow loops: do not run past the SOC window before the next step (the last
            # interval is the best guess of the next one)
            dm = _min(div_trunc(dt, 60), 10000)
            e = energy_wh(self.bat.wh, soc - self.bat.soc_min) if soc > self.bat.soc_min else 0
            x = mdiv(mdiv(_min(e, WHMAX), self.bat.eta_d, 1000), 60, dm)
            if x < hi0:
                hi0 = x
                hi_r = R_SOC
            e = energy_wh(self.bat.wh, self.bat.soc_max - soc) if soc < self.bat.soc_max else 0
            x = mdiv(mdiv(_min(e, WHMAX), 1000, self.bat.eta_c), 60, dm)
            if x < -lo0:
                lo0 = -x
                lo_r = R_SOC
        self.lo0 = lo0
        self.lo0_why = lo_r
        if dt >= self.ramp_full_s:
            lo = lo0
            hi = hi0
        else:
            rr = self.ramp_w_s * dt
            lo = clamp(sp0 - rr, lo0, hi0)
            hi = clamp(sp0 + rr, lo0, hi0)
            if lo > lo0:
                lo_r = R_RAMP
            if hi < hi0:
                hi_r = R_RAMP
        self.lo = lo
        self.hi = hi
        self.lo_why = lo_r
        self.hi_why = hi_r

    def zero_export(self, net, m, pv):
        """2 zero export: sp <= net - m keeps grid >= m (the aim); else curtail PV.
        Returns the PV curtailment (W)."""
        # Zero export outranks the ramp: a cut of discharge (or more charge) that stops
        # export is not ramp-limited, only the safety limits lo0 bind (night: no PV to
        # curtail). The ramp still limits moves toward export and any charge beyond need.
        curt = 0
        x = net - m
        if x < self.lo:
            if x > self.lo0:
                self.lo = x
                self.lo_why = R_EXPORT
            else:
                self.lo = self.lo0
                self.lo_why = self.lo0_why
            curt = _min(pv, self.lo - x)
            self.hi = self.lo
            self.hi_why = R_EXPORT
        elif x < self.hi:
            self.hi = x
            self.hi_why = R_EXPORT
        return curt

    def cap(self, net, cap_w):
        """3 import cap: sp >= net - cap."""
        c = net - cap_w
        if c > self.hi:
            self.lo = self.hi      # cap out of reach: whatever limits hi is the reason
            self.lo_why = self.hi_why
        elif c > self.lo:
            self.lo = c
            self.lo_why = R_CAP

    def reserve(self, soc, floor):
        """4 critical reserve (hysteresis): below floor, discharge only what the cap needs."""
        if soc < floor:
            self.reserve_low = True
        elif soc >= floor + self.bat.hyst:
            self.reserve_low = False
        if self.reserve_low and self.hi > self.lo:
            z = self.lo if self.lo > 0 else 0
            if z < self.hi:
                self.hi = z
                self.hi_why = R_RESERVE
