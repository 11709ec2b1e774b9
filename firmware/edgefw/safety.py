# Safety interlock, independent of dispatch and of the cloud. It trips on: a BMS alarm or
# protection bit; a safety point (BMS alarm, protect, soc; PCS fault) that is not polled
# (config `points` left it out), never read, or older than its device's max age (an
# exception answer to its read leaves it ageing); a PCS fault; a polled PCS that stopped
# answering (pcs_stale). While tripped the PCS is commanded to 0 W and stop, re-sent every
# bus turn until the PCS acknowledges. It releases only after the site has been clean for
# safety.clean_s (site time) without interruption. Several packs / PCS: see _multi().
from edgefw import clock
from edgefw.fx import div_trunc

_Q_STALE = 2  # site.Q_STALE (not imported: site imports nothing of ours but clock/fx)


def _polled(dev, name):
    # devices.Device knows its read plan; other device objects (tests) poll everything
    f = getattr(dev, "polls", None)
    return True if f is None else f(name)


class Safety:
    def __init__(self, scfg, pack_trip="site"):
        self.pack_trip = pack_trip  # config limits.pack_trip: "site" or "pcs"
        self.pcs_off = {}           # several PCS: name -> why that one is stopped
        self.pcs_since = {}         # name -> site ms of its first clean check
        self.pcs_trips = 0          # PCS stops after the boot hold (as trips counts)
        self.booted = False         # the boot hold was released once
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

    def _point(self, site, role, dev, name, now, need):
        """Reason a safety point cannot be trusted, or None. need: trip when it was
        never read / is not polled; staleness trips when trip_on_stale."""
        if not _polled(dev, name):
            return "%s %s not polled (devices[].points)" % (role, name) if need else None
        v, _, q = site.point(dev, name, now)
        if v is None:
            return "%s: no %s data yet" % (role, name) if need else None
        if q >= _Q_STALE and self.on_stale:
            return "%s %s stale" % (role, name)
        return None

    def _pack(self, site, bms, now):
        """Reason one BMS cannot be trusted (alarm, protect, stale, not read), or None."""
        for name, on in (("alarm", self.on_alarm), ("protect", self.on_protect)):
            if not on:
                continue
            a = bms.values.get(name)
            if a:
                return "bms %s 0x%x" % (name, a)
            r = self._point(site, "bms", bms, name, now, True)
            if r is not None:
                return r
        return self._point(site, "bms", bms, "soc_cpct", now, self.on_stale)

    def _pcs(self, site, pcs, now):
        """Reason one PCS must stop (fault, stale, not read), or None."""
        if not pcs.period_ms:
            # a write-only PCS (period_ms 0) cannot be supervised; a polled one must answer
            return None
        if self.on_fault:
            f = pcs.values.get("fault")
            if f:
                return "pcs fault 0x%x" % f
            r = self._point(site, "pcs", pcs, "fault", now, True)
            if r is not None:
                return "pcs_stale" if r.endswith("stale") else r
        elif self.on_stale:
            v, _, q = site.point(pcs, "p_w", now)
            if v is not None and q >= _Q_STALE:
                return "pcs_stale"
        return None

    def faults(self, site, now):
        """The first reason to trip now, or None."""
        packs = site.roles.get("bms") or ()
        pcs = site.roles.get("pcs") or ()
        if len(packs) > 1 or len(pcs) > 1:
            return self._multi(site, packs, pcs, now)
        if packs:
            r = self._pack(site, packs[0], now)
            if r is not None:
                return r
        if pcs:
            return self._pcs(site, pcs[0], now)
        return None

    def _multi(self, site, packs, pcs, now):
        """Several packs / PCS: a silent pack or PCS drops out (stopped, limits shrink),
        the site trips when none is left; a pack alarm (or protect) trips the site, or
        with pack_trip "pcs" only the PCS that pack feeds; a point left out of the read
        plan is a config fault and trips the site."""
        bad = {}      # pcs name -> reason it is stopped now
        fed = {}      # pcs name -> the last reason of a pack it is fed by, "" = one clean
        last = None
        left = 0
        for d in packs:
            r = self._pack(site, d, now)
            p = getattr(d, "feeds", None)
            if p is not None and fed.get(p) != "":
                fed[p] = "" if r is None else "%s: %s" % (d.name, r)
            if r is None:
                left += 1
                continue
            r = "%s: %s" % (d.name, r)
            last = r
            if "not polled" in r:
                return r
            if r.find(" alarm 0x") > 0 or r.find(" protect 0x") > 0:
                if self.pack_trip == "site" or getattr(d, "feeds", None) is None:
                    return r
                bad[d.feeds] = r
        if packs and not left:
            return last
        for p in fed:
            if fed[p] and p not in bad:
                bad[p] = fed[p]  # every pack of this PCS is silent: it stops
        for d in pcs:
            r = self._pcs(site, d, now)
            if r is not None:
                bad[d.name] = "%s: %s" % (d.name, r)
        clean = 0
        for d in pcs:
            r = bad.get(d.name)
            self._hold(d.name, r, now)
            if r is None:
                clean += 1
            else:
                last = r
        if pcs and not clean:
            return last  # the site trip; each PCS's own hold runs alongside it
        return None

    def _hold(self, name, r, now):
        """Per-PCS trip and release (safety.clean_s clean, as the site's); True: off."""
        off = self.pcs_off
        if r is not None:
            if name not in off and self.booted:
                self.pcs_trips += 1     # (not a PCS waiting for its first answer at boot)
            off[name] = r
            self.pcs_since[name] = None
            return True
        if name not in off:
            return False
        t = self.pcs_since.get(name)
        if t is None:
            self.pcs_since[name] = now
        elif clock.ticks_diff(now, t) >= self.clean_ms:
            del off[name]
            del self.pcs_since[name]
            return False
        return True

    def stopped(self, name):
        """True while the PCS of that name must be at 0 W and stopped."""
        return self.tripped or name in self.pcs_off

    def trip(self, reason):
        """Trip from outside (the loop could not evaluate the interlock)."""
        self.since = None
        self.reason = reason
        if not self.tripped:
            self.tripped = True
            self.trips += 1
            self.last_trip_s = clock.time()
            return True
        return False

    def check(self, site, now=None):
        """Evaluate; returns True on a new trip (the caller commands the PCS at once)."""
        if now is None:
            now = clock.site_ms()
        r = self.faults(site, now)
        if r is not None:
            return self.trip(r)
        if self.tripped:
            if self.since is None:
                self.since = now
            elif clock.ticks_diff(now, self.since) >= self.clean_ms:
                self.tripped = False
                self.booted = True
                self.reason = ""
                self.since = None
        return False

    def status(self, now=None):
        if now is None:
            now = clock.site_ms()
        left = None
        if self.tripped and self.since is not None:
            left = div_trunc(self.clean_ms - clock.ticks_diff(now, self.since), 1000)
            if left < 0:
                left = 0
        out = {"tripped": self.tripped, "reason": self.reason, "trips": self.trips,
               "last_trip_s": self.last_trip_s, "release_in_s": left}
        if self.pcs_trips:
            out["pcs_off"] = dict(self.pcs_off)
            out["pcs_trips"] = self.pcs_trips
        return out
