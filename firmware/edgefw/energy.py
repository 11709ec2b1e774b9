# Energy and carbon accounting on the gateway: Wh counters per flow, integer only, with
# carried remainders so nothing drifts over a year of 1 s steps; Scope 2 location-based
# CO2 from grid import; counters persisted at most once per persist interval (bounded
# flash writes) to two slot files, each written atomically with a CRC-32, so a power cut
# loses at most one interval. Flow split per step (PV first to the load, then to the
# battery, the rest exported; the load takes PV, then battery, then grid).
import json
import os

from edgefw.dispatch import _mdiv, _frac

try:
    from binascii import crc32
except ImportError:  # pragma: no cover
    crc32 = None

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

WMAX = const(10000000)
DT_MAX_MS = const(60000)      # a longer step is split so w * dt stays below 2**30
_MEGA = const(1000000)

# Scope 2 location-based grid factors, China, 0.1 g CO2/kWh (MEE): national by year,
# regional grids 2023. "national" = the latest national average (2023, 0.5306 t/MWh).
FACTORS = {
    "national": 5306, "national_2023": 5306, "national_2022": 5366, "national_2021": 5568,
    "north": 6361, "northwest": 5543, "east": 5500, "northeast": 5122, "central": 5271,
    "south": 4042, "southwest": 2472,
}

# counter names, in slot order
NAMES = ("pv_load", "pv_bat", "pv_grid", "bat_load", "bat_grid", "grid_load", "grid_bat",
         "curtail", "grid_imp", "grid_exp", "it", "aux", "pv", "it_green", "co2_dg")
PV_LOAD = const(0)
PV_BAT = const(1)
PV_GRID = const(2)
BAT_LOAD = const(3)
BAT_GRID = const(4)
GRID_LOAD = const(5)
GRID_BAT = const(6)
CURTAIL = const(7)
GRID_IMP = const(8)
GRID_EXP = const(9)
IT = const(10)
AUX = const(11)
PV = const(12)
IT_GREEN = const(13)
CO2 = const(14)               # unit: 0.1 g CO2 (fed with grid import W x factor / 1000)
N = const(15)


def grid_factor(region, g_kwh=None, dg_kwh=None):
    """Grid factor in 0.1 g/kWh: explicit dg_kwh, else g_kwh x 10, else the region's."""
    if dg_kwh is not None:
        return dg_kwh
    if g_kwh is not None:
        return g_kwh * 10
    if region not in FACTORS:
        raise ValueError("site.region: %r is not one of %s"
                         % (region, ", ".join(sorted(FACTORS))))
    return FACTORS[region]


def _min(a, b):
    return a if a < b else b


class Energy:
    def __init__(self, params):
        self.dg = params.get("grid_factor_dg_kwh") or 5306
        self.persist_s = params.get("energy_persist_s") or 900
        # each counter = mwh * 10**6 + wh, plus remainders in W*s (kW part) and W*ms
        self.wh = [0] * N
        self.mwh = [0] * N
        self.rs = [0] * N
        self.rms = [0] * N
        self.pw = [0] * N        # this step's flow powers (W), reused
        # battery content split green/grey (Wh, W*s remainders) for the renewable share
        self.bg = 0
        self.bx = 0
        self.bgr = 0
        self.bxr = 0
        self.seq = 0
        self.t_saved = None
        self.writes = 0

    def _acc(self, i, w, dt):
        # exact: w*dt W*ms = 1000*(w//1000)*dt + (w%1000)*dt; w >= 0 (every flow is),
        # dt <= 60000. W*ms carry into W*s (< 1000 left), W*s into Wh (< 3600 left), so
        # the counter is always exactly floor(integral / 1 Wh): nothing drifts.
        wk = w // 1000
        r2 = self.rms[i] + (w - wk * 1000) * dt
        c = r2 // 1000
        self.rms[i] = r2 - c * 1000
        r = self.rs[i] + wk * dt + c
        q = r // 3600
        self.rs[i] = r - q * 3600
        wh = self.wh[i] + q
        if wh >= _MEGA:
            self.mwh[i] += 1
            wh -= _MEGA
        self.wh[i] = wh

    def step(self, dt_ms, pv_avail_w, pv_w, it_w, aux_w, bat_w, grid_w):
        """Account dt_ms of these powers (contract signs: bat + = discharge, grid + =
        import). Flows come from the balance; grid import/export from the grid meter."""
        while dt_ms > DT_MAX_MS:
            self._step(DT_MAX_MS, pv_avail_w, pv_w, it_w, aux_w, bat_w, grid_w)
            dt_ms -= DT_MAX_MS
        if dt_ms > 0:
            self._step(dt_ms, pv_avail_w, pv_w, it_w, aux_w, bat_w, grid_w)

    def _step(self, dt, pva, pv, it, aux, bat, grid):
        pv = _clamp(pv, 0, WMAX)
        pva = _clamp(pva, pv, WMAX)
        it = _clamp(it, 0, WMAX)
        aux = _clamp(aux, 0, WMAX)
        bat = _clamp(bat, -WMAX, WMAX)
        grid = _clamp(grid, -WMAX, WMAX)
        load = it + aux
        ch = -bat if bat < 0 else 0
        dis = bat if bat > 0 else 0
        p = self.pw
        p[PV_LOAD] = _min(pv, load)
        rest = pv - p[PV_LOAD]
        p[PV_BAT] = _min(rest, ch)
        p[PV_GRID] = rest - p[PV_BAT]
        lrest = load - p[PV_LOAD]
        p[BAT_LOAD] = _min(dis, lrest)
        p[BAT_GRID] = dis - p[BAT_LOAD]
        p[GRID_LOAD] = lrest - p[BAT_LOAD]
        p[GRID_BAT] = ch - p[PV_BAT]
        p[CURTAIL] = pva - pv
        p[GRID_IMP] = grid if grid > 0 else 0
        p[GRID_EXP] = -grid if grid < 0 else 0
        p[IT] = it
        p[AUX] = aux
        p[PV] = pv
        # green share of what the battery delivers = green share of its content
        tot = self.bg + self.bx
        f = _frac(self.bg, tot) if 0 < tot <= 10000000 else (
            _frac(self.bg >> 4, tot >> 4) if tot > 0 else 0)
        green = p[PV_LOAD] + _mdiv(p[BAT_LOAD], f, 10000)
        # the IT load gets the same mix as the whole load
        if load > 0:
            sh = _frac(it, load) if load <= 10000000 else _frac(it >> 2, load >> 2)
            p[IT_GREEN] = _mdiv(green, sh, 10000)
        else:
            p[IT_GREEN] = 0
        p[CO2] = _mdiv(p[GRID_IMP], self.dg, 1000)
        for i in range(N):
            self._acc(i, p[i], dt)
        self._battery(dt, p[PV_BAT], p[GRID_BAT], dis, f)

    def _battery(self, dt, g_in, x_in, out, f):
        # what the battery holds, split green (from PV) / grey (from grid), in Wh; only
        # its ratio is used, so efficiency losses are ignored here
        g_out = _mdiv(out, f, 10000)
        self.bgr, self.bg = _carry(self.bgr, self.bg, g_in - g_out, dt)
        self.bxr, self.bx = _carry(self.bxr, self.bx, x_in - (out - g_out), dt)

    # ---- reading ----------------------------------------------------------------

    def get(self, i):
        """Counter i in Wh (may be a long int on a 32-bit port after 1 GWh)."""
        return self.mwh[i] * _MEGA + self.wh[i]

    def counters(self):
        d = {}
        for i in range(N):
            if i != CO2:
                d[NAMES[i] + "_wh"] = self.get(i)
        d["co2_kg"] = self.co2_kg()
        d["renewable_cpct"] = self.renewable_cpct()
        return d

    def co2_kg(self):
        """Scope 2 location-based kg CO2 (floor): counter unit is 0.1 g."""
        return self.mwh[CO2] * 100 + self.wh[CO2] // 10000

    def renewable_cpct(self):
        """Renewable share of the compute (IT) energy, 0.01 %."""
        return _share(self.get(IT_GREEN), self.get(IT))

    def pv_used_cpct(self):
        """Share of the produced PV used on site (load or battery), 0.01 %."""
        return _share(self.get(PV) - self.get(PV_GRID), self.get(PV))

    # ---- persistence ------------------------------------------------------------

    def state(self):
        return {"v": 1, "seq": self.seq, "wh": self.wh, "mwh": self.mwh, "rs": self.rs,
                "rms": self.rms, "b": [self.bg, self.bx, self.bgr, self.bxr]}

    def save(self, path):
        """Write the counters to the older of two slots (path.0 / path.1), atomically."""
        self.seq += 1
        body = json.dumps(self.state())
        text = "%s\n#crc32 %08x\n" % (body, crc32(body.encode()))
        slot = "%s.%d" % (path, self.seq & 1)
        tmp = slot + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.rename(tmp, slot)
        except OSError:
            try:
                os.remove(slot)
            except OSError:
                pass
            os.rename(tmp, slot)
        self.writes += 1

    def load(self, path):
        """Restore from the newest valid slot; returns True if one was found."""
        best = None
        for k in (0, 1):
            st = _read_slot("%s.%d" % (path, k))
            if st is not None and (best is None or st["seq"] > best["seq"]):
                best = st
        if best is None:
            return False
        self.seq = best["seq"]
        self.wh = best["wh"]
        self.mwh = best["mwh"]
        self.rs = best["rs"]
        self.rms = best["rms"]
        self.bg, self.bx, self.bgr, self.bxr = best["b"]
        return True

    def persist(self, now_s, path):
        """Save if persist_s has passed since the last save (bounded flash writes)."""
        if self.t_saved is None:
            self.t_saved = now_s
            return False
        if now_s - self.t_saved < self.persist_s:
            return False
        self.save(path)
        self.t_saved = now_s
        return True


def _read_slot(name):
    try:
        with open(name) as f:
            text = f.read()
    except OSError:
        return None
    i = text.rfind("\n#crc32 ")
    if i < 0:
        return None
    body = text[:i]
    if text[i + 8:].strip() != "%08x" % crc32(body.encode()):
        return None
    try:
        st = json.loads(body)
    except ValueError:
        return None
    if not isinstance(st, dict) or st.get("v") != 1:
        return None
    for k in ("wh", "mwh", "rs", "rms"):
        v = st.get(k)
        if not isinstance(v, list) or len(v) != N:
            return None
    return st


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


def _carry(rem, wh, w, dt):
    # integrate w W (any sign, |w| <= 2e7) for dt ms into wh with remainder in W*ms / 1000
    # = W*s units kept exact: |w*dt| can reach 1.2e12, so do kW and W parts separately
    neg = w < 0
    a = -w if neg else w
    wk = a // 1000
    wr = a - wk * 1000
    x = wk * dt + (wr * dt) // 1000     # W*s, truncated below 1 W*s (battery split only)
    if neg:
        x = -x
    rem += x
    q = rem // 3600 if rem >= 0 else -((-rem) // 3600)
    rem -= q * 3600
    wh += q
    if wh < 0:
        wh = 0
    return rem, wh


def _share(num, den):
    """num / den in 0.01 % for 0 <= num <= den (any size)."""
    if den <= 0:
        return 0
    while den > 10000000:
        num >>= 4
        den >>= 4
    if num > den:
        num = den
    if num < 0:
        num = 0
    return _frac(num, den)
