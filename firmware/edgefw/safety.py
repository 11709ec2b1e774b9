# Safety interlock, independent of dispatch and of the cloud: a BMS alarm or protection
# bit, BMS data stale (or never seen), or a PCS fault trips it; while tripped the PCS is
# commanded to 0 W and stop on the next bus turn. It releases only after the site has
# been clean for safety.clean_s (site time) without interruption.
from edgefw import clock


class Safety:
    def __init__(self, scfg):
        self.clean_ms = scfg.get("clean_s", 30) * 1000
        self.on_alarm = scfg.get("trip_on_alarm", True)
        self.on_protect = scfg.get("trip_on_protect", True)
        self.on_stale = scfg.get("trip_on_stale", True)
        self.on_fault = scfg.get("trip_on_pcs_fault", True)
        self.tripped = True        # nothing is known at boot: start safe
        self.reason = "boot: no BMS data yet"
        self.since = None          # site ms of the first clean check after a fault
        self.trips = 0             # trips after boot
        self.last_trip_s = None

    def faults(self, site, now):
        """The first reason to trip now, or None."""
        bms = site.dev("bms")
        if bms is not None:
            if self.on_alarm:
                a = bms.values.get("alarm")
                if a:
                    return "bms alarm 0x%x" % a
            if self.on_protect:
                p = bms.values.get("protect")
                if p:
                    return "bms protect 0x%x" % p
            if self.on_stale:
                v, _, q = site.role_point("bms", "soc_cpct", now)
                if v is None:
                    return "bms: no data yet"
                if q >= 2:  # site.Q_STALE
                    return "bms data stale"
        pcs = site.dev("pcs")
        if pcs is not None and self.on_fault:
            f = pcs.values.get("fault")
            if f:
                return "pcs fault 0x%x" % f
        return None

    def check(self, site, now=None):
        """Evaluate; returns True on a new trip (the caller commands the PCS at once)."""
        if now is None:
            now = clock.site_ms()
        r = self.faults(site, now)
        if r is not None:
            self.since = None
            new = not self.tripped
            if new or r != self.reason:
                self.reason = r
            if new:
                self.tripped = True
                self.trips += 1
                self.last_trip_s = clock.time()
            return new
        if self.tripped:
            if self.since is None:
                self.since = now
            elif clock.ticks_diff(now, self.since) >= self.clean_ms:
                self.tripped = False
                self.reason = ""
                self.since = None
        return False

    def status(self, now=None):
        if now is None:
            now = clock.site_ms()
        left = None
        if self.tripped and self.since is not None:
            left = (self.clean_ms - clock.ticks_diff(now, self.since)) // 1000
        return {"tripped": self.tripped, "reason": self.reason, "trips": self.trips,
                "last_trip_s": self.last_trip_s, "release_in_s": left}
