# What the gateway learns about its own site, for the fallback plan (docs/dispatch.md, "The
# plan"): per time of day, 96 slots of 15 min (local time), the IT load, the aux load and
# the PV power it measured, as day-to-day exponentially weighted averages in W. Why: past
# the tracker's forecast the plan saw only the base load, the present aux persisted (a
# thermostat's cycle held all night) and a parabola for PV (not the site's shape, nor what
# its mornings give); issue 15. The PV profile is in W, not a clear-sky index: it carries
# the site's real shape (orientation, shading, the season) with or without pv_peak_w, and
# the plan scales it by today's index against it (planner.Profile).
# Fixed memory (arrays preallocated here), learn() allocates nothing; persisted in two
# sealed slots like the energy counters (store.seal/write_atomic), at most once a
# persist interval (default 1 h: 24 flash writes a day).
import json
from array import array

from edgefw import store
from edgefw.fx import div_trunc, clamp

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

NSLOT = const(96)
SLOT_S = const(900)
_WMAX = const(10000000)
_GAIN_LOAD = const(2)       # loads: yesterday's slot and today's, averaged
_GAIN_PV = const(4)         # PV: a slower average (the weather of one day is not the site's)
_COVER_S = const(450)       # a slot is committed only if measured over half of it at least
_KEYS = ("it", "aux", "pv")


class Learnt:
    def __init__(self, persist_s=3600):
        self.it = array("i", [0] * NSLOT)
        self.aux = array("i", [0] * NSLOT)
        self.pv = array("i", [0] * NSLOT)
        self.seen = bytearray(NSLOT)     # 1: the slot has been committed at least once
        self.pv_max = 0                  # the highest learnt PV slot (W)
        self.on = True                   # false: measurements are not learnt (no clock)
        self.slot = -1                   # slot being measured
        self.tod0 = 0                    # its first measurement (local s of day)
        self.tod1 = 0                    # its last
        self.n = 0                       # measurements in it
        self.m_it = 0                    # their running means (W)
        self.m_aux = 0
        self.m_pv = 0
        self.every = store.Every(persist_s)
        self.seq = 0
        self.writes = 0

    @staticmethod
    def slot_of(tod):
        """Slot of a local time of day tod (s, 0 <= tod; past midnight folds over)."""
        s = div_trunc(tod, SLOT_S)
        while s >= NSLOT:
            s -= NSLOT
        return s

    def learn(self, tod, pv_w, it_w, aux_w):
        """One measurement at local time of day tod (0..86399 s). Allocation-free."""
        if not self.on:
            return
        s = self.slot_of(tod)
        if s != self.slot or tod < self.tod1:
            self._commit()
            self.slot = s
            self.tod0 = tod
            self.n = 0
            self.m_it = 0
            self.m_aux = 0
            self.m_pv = 0
        self.tod1 = tod
        n = self.n + 1
        if n > 10000:
            n = 10000
        self.n = n
        self.m_it += div_trunc(clamp(it_w, 0, _WMAX) - self.m_it, n)
        self.m_aux += div_trunc(clamp(aux_w, 0, _WMAX) - self.m_aux, n)
        self.m_pv += div_trunc(clamp(pv_w, 0, _WMAX) - self.m_pv, n)

    def _commit(self):
        s = self.slot
        if s < 0 or self.n < 3 or self.tod1 - self.tod0 < _COVER_S:
            return      # a slot cut short (boot, clock step) is not the slot's mean
        if self.seen[s]:
            self.it[s] += div_trunc(self.m_it - self.it[s], _GAIN_LOAD)
            self.aux[s] += div_trunc(self.m_aux - self.aux[s], _GAIN_LOAD)
            self.pv[s] += div_trunc(self.m_pv - self.pv[s], _GAIN_PV)
        else:
            self.it[s] = self.m_it
            self.aux[s] = self.m_aux
            self.pv[s] = self.m_pv
            self.seen[s] = 1
        m = 0
        for i in range(NSLOT):
            if self.pv[i] > m:
                m = self.pv[i]
        self.pv_max = m

    # ---- persistence (allocates: never in the control step's path but persist()'s) ----

    def state(self):
        return {"v": 1, "seq": self.seq, "it": list(self.it), "aux": list(self.aux),
                "pv": list(self.pv), "seen": list(self.seen)}

    def restore(self, st):
        """Take a state() back; False (nothing changed) if it does not fit."""
        if not isinstance(st, dict) or st.get("v") != 1:
            return False
        for k in _KEYS + ("seen",):
            v = st.get(k)
            if not isinstance(v, list) or len(v) != NSLOT:
                return False
            for x in v:
                if not isinstance(x, int) or isinstance(x, bool) or x < 0 or x > _WMAX:
                    return False
        sq = st.get("seq")
        self.seq = sq if isinstance(sq, int) and not isinstance(sq, bool) else 0
        for k in _KEYS:
            a = getattr(self, k)
            v = st[k]
            for i in range(NSLOT):
                a[i] = v[i]
        for i in range(NSLOT):
            self.seen[i] = 1 if st["seen"][i] else 0
        self.slot = -1
        self.pv_max = 0
        for i in range(NSLOT):
            if self.pv[i] > self.pv_max:
                self.pv_max = self.pv[i]
        return True

    def save(self, path):
        """Write the profiles to the older of two slots (path.0 / path.1), atomically."""
        self.seq += 1
        store.write_atomic("%s.%d" % (path, self.seq & 1), store.seal(json.dumps(self.state())))
        self.writes += 1

    def load(self, path):
        """Restore from the newest slot that is valid; True if one was found."""
        got = []
        for k in (0, 1):
            body = store.read_checked("%s.%d" % (path, k))[1]
            try:
                st = json.loads(body) if body is not None else None
            except ValueError:
                st = None
            if isinstance(st, dict) and isinstance(st.get("seq"), int):
                got.append(st)
        if len(got) == 2 and got[1]["seq"] > got[0]["seq"]:
            got.reverse()
        for st in got:
            if self.restore(st):
                return True
        return False

    def persist(self, now_s, path):
        """Save if persist_s has passed since the last save (bounded flash writes)."""
        if not self.every.due(now_s):
            return False
        self.save(path)
        return True
