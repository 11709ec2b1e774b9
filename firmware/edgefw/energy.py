# Energy and carbon accounting on the gateway: Wh counters per flow, integer only, with
# carried remainders so nothing drifts over a year of 1 s steps; Scope 2 location-based
# CO2 from grid import; counters persisted at most once per persist interval (bounded
# flash writes) to two slot files, each written atomically with a CRC-32, so a power cut
# loses at most one interval. Flow split per step (PV first to the load, then to the
# battery, the rest exported; the load takes PV, then battery, then grid). The battery's
# content is split green (from PV) / grey (from grid), so what it later delivers to the
# load is green in that share (bat_green). Per-hour figures: edgefw/ledger.py.
import json

from edgefw import store
from edgefw.fx import mdiv as _mdiv, frac as _frac

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
         "curtail", "grid_imp", "grid_exp", "it", "aux", "pv", "it_green", "co2_dg",
         "bat_green")
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
BAT_GREEN = const(15)         # the green (PV-charged) share of bat_load
N = const(16)
N_V1 = const(15)              # slots written before bat_green existed (read, padded)


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
        # [green Wh, grey Wh, green rem, grey rem] (one list: updated in place, no tuple)
        self.b = [0, 0, 0, 0]
        self.seq = 0
        self.every = store.Every(self.persist_s)
        self.writes = 0
        self.ledger = _ledger()

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
        bg = self.b[0]
        tot = bg + self.b[1]
        f = _frac(bg, tot) if 0 < tot <= 10000000 else (
            _frac(bg >> 4, tot >> 4) if tot > 0 else 0)
        p[BAT_GREEN] = _mdiv(p[BAT_LOAD], f, 10000)
        green = p[PV_LOAD] + p[BAT_GREEN]
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
        _carry(self.b, 0, g_in - g_out, dt)
        _carry(self.b, 1, x_in - (out - g_out), dt)

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

    def hourly(self, k=0):
        """Telemetry dict of the hourly ledger (k: the record's seq): a closed hour and
        the current one (edgefw/ledger.py record)."""
        return self.ledger.record(self, _share, k)

    def pv_used_cpct(self):
        """Share of the produced PV used on site (load or battery), 0.01 %."""
        return _share(self.get(PV) - self.get(PV_GRID), self.get(PV))

    # ---- persistence ------------------------------------------------------------

    def state(self):
        return {"v": 1, "seq": self.seq, "wh": self.wh, "mwh": self.mwh, "rs": self.rs,
                "rms": self.rms, "b": self.b,
                "l": self.ledger.state()}

    def save(self, path):
        """Write the counters to the older of two slots (path.0 / path.1), atomically."""
        self.seq += 1
        store.write_atomic("%s.%d" % (path, self.seq & 1), store.seal(json.dumps(self.state())))
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
        b = best["b"]
        self.b = [b[0], b[1], b[2], b[3]]
        if not isinstance(best.get("l"), dict) or not self.ledger.restore(best["l"]):
            self.ledger = _ledger()  # older slot: the hours start afresh
        return True

    def persist(self, now_s, path):
        """Close the ledger's hour if now_s (rel s) is in a new one, then save if persist_s
        has passed since the last save (bounded flash writes: 86400 / persist_s a day)."""
        self.ledger.roll(now_s, self)
        if not self.every.due(now_s):
            return False
        self.save(path)
        return True


def _read_slot(name):
    body = store.read_checked(name)[1]
    if body is None:
        return None
    try:
        st = json.loads(body)
    except ValueError:
        return None
    if not isinstance(st, dict) or st.get("v") != 1:
        return None
    for k in ("wh", "mwh", "rs", "rms"):
        v = st.get(k)
        if isinstance(v, list) and len(v) == N_V1:
            v.append(0)           # a slot from before bat_green: that counter starts at 0
        if not isinstance(v, list) or len(v) != N:
            return None
    return st


def _ledger():
    # imported at use: dispatch.validate_params imports this module during the boot's
    # config check, whose peak must not grow (a 384k virtual gateway compiles from source)
    from edgefw.ledger import for_energy
    return for_energy()


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


def _carry(b, k, w, dt):
    # integrate w W (any sign, |w| <= 2e7) for dt ms into b[k] Wh with remainder b[k + 2]
    # in W*s, updated in place (a returned tuple would allocate on every step): |w*dt| can
    # reach 1.2e12, so do kW and W parts separately
    rem = b[k + 2]
    wh = b[k]
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
    b[k + 2] = rem
    b[k] = wh


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
