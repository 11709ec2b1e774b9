# Hourly green ledger: per UTC hour, the Wh of PV used on site, PV stored and later
# discharged to the load (green), grid import, the IT load and its carbon-free part, so
# the 24/7 CFE score (hourly matching, not annual netting) can be read off the gateway.
# It owns no integrator: an hour is the difference of edgefw.energy's exact cumulative
# counters between two hour boundaries (their carried remainders stay in Energy), so the
# hours of a day add up to the day's counters exactly. Fixed memory: the last 48 closed
# hours in an int32 ring plus the snapshot the current hour runs from. Persisted inside
# Energy's own slot file (same atomic write + CRC, same cadence, consistent with it).
from array import array

from edgefw.clock import EPOCH, _VALID_REL

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

HOURS = const(48)
_MEGA = const(1000000)

# telemetry names of the columns: the same as protocols.topics.LEDGER_FIELDS (a test holds
# them equal), not imported from there: a site without a link would load topics for them
NAMES = ("pv_wh", "pv_load_wh", "pv_bat_wh", "bat_green_wh", "bat_load_wh", "grid_imp_wh",
         "grid_load_wh", "it_wh", "it_green_wh")


def for_energy():
    """The ledger of edgefw.energy's counters (imported here: energy imports this module
    only when it makes an Energy)."""
    from edgefw import energy as E
    return Ledger((E.PV, E.PV_LOAD, E.PV_BAT, E.BAT_GREEN, E.BAT_LOAD, E.GRID_IMP,
                   E.GRID_LOAD, E.IT, E.IT_GREEN), NAMES)


class Ledger:
    def __init__(self, cols, names):
        # cols: Energy counter indices kept per hour; names: their telemetry names
        self.cols = cols
        self.names = names
        k = len(cols)
        self.k = k
        # zeroed from bytes: a list of ints first would be a transient twice the size
        self.rv = array("i", bytes(4 * HOURS * k))  # ring: Wh per hour and column
        self.rh = array("i", bytes(4 * HOURS))      # ring: hour index (rel s // 3600)
        self.n = 0                                # closed hours held (<= HOURS)
        self.head = 0                             # next ring row to write
        self.sw = array("i", bytes(4 * k))          # counters at the current hour's start
        self.sm = array("i", bytes(4 * k))          # (Wh part, MWh part)
        self.cur_h = None                         # current hour index, None = not started
        self.valid_from = _VALID_REL              # earlier times: clock not set (host: any)

    def roll(self, now_s, e):
        """Call after each Energy.step with site time (rel s): closes the hour when the
        clock has moved into another one. Allocates nothing (heap_lock tested)."""
        if now_s < self.valid_from:
            return False          # wall clock not set yet (2000 after a power cut): wait
        q = now_s // 3600 if now_s >= 0 else -((3599 - now_s) // 3600)  # floor, both signs
        if q == self.cur_h:
            return False
        if self.cur_h is not None:
            row = self.head * self.k
            for j in range(self.k):
                self.rv[row + j] = self._delta(e, j)
            self.rh[self.head] = self.cur_h
            self.head = self.head + 1 if self.head + 1 < HOURS else 0
            if self.n < HOURS:
                self.n += 1
        self._snap(e)
        self.cur_h = q
        return True

    def _snap(self, e):
        for j in range(self.k):
            i = self.cols[j]
            self.sw[j] = e.wh[i]
            self.sm[j] = e.mwh[i]

    def _delta(self, e, j):
        # Wh since the hour's snapshot: the MWh parts differ by at most a few (< 10 MW),
        # so every intermediate stays a small int
        i = self.cols[j]
        return (e.mwh[i] - self.sm[j]) * _MEGA + e.wh[i] - self.sw[j]

    # ---- reading ----------------------------------------------------------------

    def hour(self, back):
        """(hour index, [Wh per column]) of the closed hour `back` hours ago (0 = the
        last closed one), or None."""
        if back < 0 or back >= self.n:
            return None
        r = self.head - 1 - back
        if r < 0:
            r += HOURS
        return self.rh[r], [self.rv[r * self.k + j] for j in range(self.k)]

    def current(self, e):
        """[Wh per column] of the current hour so far (zeros before the clock is set)."""
        if self.cur_h is None:
            return [0] * self.k
        return [self._delta(e, j) for j in range(self.k)]

    def _rec(self, vals, share):
        d = {}
        for j in range(self.k):
            d[self.names[j]] = vals[j]
        d["cfe_cpct"] = share(d["it_green_wh"], d["it_wh"])
        return d

    def record(self, e, share, k=0):
        """Telemetry: a closed hour and the current one so far (t0 = the hour's start,
        unix s). The closed hour is the last one in every other record (k = the telemetry
        seq) and the older ones of the ring in turn in the others, so a collector fills
        the gaps of an outage (up to 48 h) from telemetry alone, at a fixed size."""
        g = {}
        n = self.n
        back = 0 if n < 2 or k & 1 == 0 else 1 + (k >> 1) % (n - 1)
        h = self.hour(back)
        if h is not None:
            g["hour"] = self._rec(h[1], share)
            g["hour"]["t0"] = h[0] * 3600 + EPOCH
        if self.cur_h is not None:
            g["cur"] = self._rec(self.current(e), share)
            g["cur"]["t0"] = self.cur_h * 3600 + EPOCH
        return g

    # ---- persistence (inside Energy.state) ----------------------------------------

    def state(self):
        return {"h": self.cur_h, "n": self.n, "head": self.head, "sw": list(self.sw),
                "sm": list(self.sm), "rh": list(self.rh), "rv": list(self.rv)}

    def restore(self, st):
        """Take a saved state; an absent or malformed one starts the ledger afresh."""
        try:
            k = self.k
            if len(st["sw"]) != k or len(st["sm"]) != k or len(st["rh"]) != HOURS or \
                    len(st["rv"]) != HOURS * k or not 0 <= st["n"] <= HOURS or \
                    not 0 <= st["head"] < HOURS:
                return False
            h = st["h"]
            if h is not None and not isinstance(h, int):
                return False
            for key in ("sw", "sm", "rh", "rv"):
                for v in st[key]:
                    if not isinstance(v, int) or v < -1073741823 or v > 1073741823:
                        return False     # checked before anything is overwritten
            for j in range(k):
                self.sw[j] = st["sw"][j]
                self.sm[j] = st["sm"][j]
            for r in range(HOURS):
                self.rh[r] = st["rh"][r]
            for r in range(HOURS * k):
                self.rv[r] = st["rv"][r]
            self.n = st["n"]
            self.head = st["head"]
            self.cur_h = h
            return True
        except (KeyError, TypeError, ValueError, OverflowError):
            return False
