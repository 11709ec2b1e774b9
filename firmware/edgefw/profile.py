# Learned time-of-day profiles for the fallback plan: 96 slots of 15 min (local time) of the
# IT load and the aux load, in W, learnt from what the gateway measures. Integer, fixed
# memory (preallocated lists), allocation-free learn(); state()/restore() for persistence
# next to the energy counters (the caller writes the file). Why: a plan that persists the
# present aux (thermostat cycling) or the present IT load over 24 h swings with every
# compressor cycle and misses the diurnal base (issue 15).
from edgefw.fx import div_trunc, clamp

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

NSLOT = const(96)
SLOT_S = const(900)
_WMAX = const(10000000)
_GAIN = const(2)            # day-to-day gain 1/2: yesterday's slot and today's, averaged
_MIN_N = const(3)           # samples a slot needs before it is committed (a partial slot)


class Profiles:
    def __init__(self):
        self.it = [0] * NSLOT
        self.aux = [0] * NSLOT
        self.seen = [0] * NSLOT     # 1: the slot has been learnt at least once
        self._slot = -1             # slot being accumulated
        self._n = 0                 # samples in it
        self._mit = 0               # running means of this slot (W)
        self._maux = 0

    @staticmethod
    def slot_of(tod):
        """Slot of a local time of day tod (s, 0 <= tod < 86400 + 15 days)."""
        s = tod // SLOT_S           # tod >= 0 by the caller's fold: plain floor
        while s >= NSLOT:
            s -= NSLOT
        return s

    def learn(self, tod, it_w, aux_w, ok):
        """One measurement at local time of day tod (s, folded to 0..86399). ok False
        (grid outage: aux shed, the load is not the site's) skips it."""
        s = self.slot_of(tod)
        if s != self._slot:
            self._commit()
            self._slot = s
            self._n = 0
            self._mit = 0
            self._maux = 0
        if not ok:
            return
        n = self._n + 1
        if n > 10000:
            n = 10000
        self._n = n
        it = clamp(it_w, 0, _WMAX)
        aux = clamp(aux_w, 0, _WMAX)
        self._mit += div_trunc(it - self._mit, n)
        self._maux += div_trunc(aux - self._maux, n)

    def _commit(self):
        s = self._slot
        if s < 0 or self._n < _MIN_N:
            return
        if self.seen[s]:
            self.it[s] += div_trunc(self._mit - self.it[s], _GAIN)
            self.aux[s] += div_trunc(self._maux - self.aux[s], _GAIN)
        else:
            self.it[s] = self._mit
            self.aux[s] = self._maux
            self.seen[s] = 1

    def state(self):
        """JSON-able copy (for the caller's file; allocates)."""
        return {"v": 1, "it": list(self.it), "aux": list(self.aux), "seen": list(self.seen)}

    def restore(self, st):
        """Take a state() back; False (and nothing changed) if it does not fit."""
        if not isinstance(st, dict) or st.get("v") != 1:
            return False
        for k in ("it", "aux", "seen"):
            v = st.get(k)
            if not isinstance(v, list) or len(v) != NSLOT:
                return False
            for x in v:
                if not isinstance(x, int) or isinstance(x, bool) or x < 0 or x > _WMAX:
                    return False
        for i in range(NSLOT):
            self.it[i] = st["it"][i]
            self.aux[i] = st["aux"][i]
            self.seen[i] = 1 if st["seen"][i] else 0
        return True
