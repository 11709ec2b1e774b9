# One control tick (every control.period_ms of site time): update the site model,
# account energy, pick the setpoint (mode hold / a cloud setpoint via the link / local
# dispatch), limit the PV inverter, bound the setpoint (bounds.py), 0 W while tripped,
# and tell the dispatcher what the PCS really gets. The decision is named state: sp_w,
# its source src (a SRC_* constant; control branches on it) and sp_src, the display
# text status and telemetry show.
from edgefw import bounds, clock
from edgefw.nulls import NO_ENERGY, NO_LINK

ENERGY_FILE = "energy.json"
LEARNT_FILE = "learnt.json"     # the dispatcher's time-of-day profiles (learnt.py)

SRC_BOOT = 0
SRC_OFF = 1             # mode off, or no PCS: nothing is written
SRC_HOLD = 2            # mode hold: control.hold_w
SRC_NO_DATA = 3         # the dispatcher lacks fresh values: 0 W
SRC_NO_DISPATCH = 4     # no dispatcher (module absent or its parameters invalid): 0 W
SRC_DISPATCH = 5        # the local dispatcher (sp_src says its reason)
SRC_CLOUD = 6           # a cloud setpoint in force
SRC_SAFETY = 7          # the interlock tripped: 0 W and stop
SRC_STOPPED = 8         # the loop ended: 0 W and stop
_TEXT = ("boot", "off", "hold", "no data", "no dispatch", "dispatch", "cloud", "safety",
         "stopped")


class Control:
    def __init__(self, cfg, site, safety, disp, params, pcs, pv, err, t0):
        self.cfg = cfg
        self.site = site
        self.safety = safety
        self.disp = disp        # the local dispatcher, None without one
        self.params = params    # its parameters (None without one)
        self.pcs = pcs
        self.pv = pv
        self.err = err
        self.link = NO_LINK
        self.energy = NO_ENERGY
        self.learnt_file = LEARNT_FILE  # None: the learnt profiles are not saved (tests)
        self.last = t0          # site ms of the last tick (energy's dt); t0: boot
        self.sp_w = 0           # last setpoint chosen
        self.src = SRC_BOOT
        self.sp_src = "boot"
        self.bound_by = ""
        self.curtail_w = 0      # PV the dispatcher (or the cloud bound) wants shed

    def decide(self, sp, src, text=None):
        self.sp_w = sp
        self.src = src
        self.sp_src = _TEXT[src] if text is None else text

    def floor(self):
        return bounds.export_floor(self.cfg["limits"], self.params, self.cfg.get("site"))

    def _account(self, v, dt, now_r):
        s = self.site
        if s.ok("grid_w", "pv_w", "it_w", "bat_w"):
            # available PV: behind an inverter limit, the last step's estimate
            pva = self.pv.avail_w if self.pv.avail_w is not None else v["pv_w"]
            try:
                self.energy.step(dt, pva, v["pv_w"], v["it_w"],
                                 v["aux_w"] or 0, v["bat_w"], v["grid_w"])
                self.energy.persist(now_r, ENERGY_FILE)  # bounded flash writes
            except Exception as e:
                self.err("energy: %s" % e)

    def _local(self, now_r, v, pv):
        """(local dispatch setpoint or None, source, display text)."""
        d = self.disp
        if d is None:
            return None, SRC_NO_DISPATCH, None
        if not self.site.ok("grid_w", "pv_w", "it_w", "bat_w", "soc_cpct"):
            return None, SRC_NO_DATA, None
        d.learnt.on = clock.valid()     # no wall clock: no time of day to learn by
        local = d.step(now_r, pv, v["it_w"], v["aux_w"] or 0, v["grid_w"], v["soc_cpct"],
                       v["ccl_w"] or 0, v["dcl_w"] or 0)
        self.curtail_w = d.curtail_w
        try:
            if self.learnt_file:
                d.learnt.persist(now_r, self.learnt_file)   # bounded flash writes (1 h)
        except Exception as e:
            self.err("learnt: %s" % e)
        return local, SRC_DISPATCH, "dispatch:" + str(d.reason)

    def _cloud(self, now_r, local):
        """The cloud setpoint in force (None: none, or the wall clock is not set: ok
        False), offered the local setpoint (the link reports it)."""
        try:
            c = self.link.setpoint(now_r, local, True)
        except Exception as e:
            c = None
            self.err("link setpoint: %s" % e)
        return c, c is None or clock.valid()

    def _limit_pv(self, v, pv, pvm, rat, src, local):
        # a trip: the PCS stops, so on a zero-export site the PV is held to the load
        # (what the battery took would go out); a cloud setpoint: the bound charges up
        # to the limits and the PV beyond that is shed (bounds.cloud_curtail); else the
        # dispatcher's curtail_w
        pv_ = self.pv
        if pvm is not None and self.safety.tripped:
            pv_.pvl.limit(bounds.trip_curtail(v, pv_.est_w(), self.params), rat)
        elif src == SRC_CLOUD:
            f = self.floor()
            c = bounds.cloud_curtail(v, pv if pv is not None else pv_.est_w(),
                                     self.cfg["limits"], f)
            self.curtail_w = c
            if f is None:
                pv_.pvl.release()  # export allowed without a cap: nothing to hold
            elif pvm is not None:
                pv_.pvl.limit(c, rat)
        elif pvm is not None and local is not None:
            pv_.pvl.limit(self.curtail_w, rat)
        pv_.service(rat)

    def _bound(self, sp, v, chase):
        s = self.site
        act = self.pcs.act
        a = self.pcs.acked()
        fresh = self._grid_after_change()
        bok = s.ok("bat_w")
        b = bounds.pcs_now(a, act.prev, fresh, v["bat_w"] if bok else None)
        return bounds.bound(sp, v, self.cfg["limits"], self.floor(), a, b, s.ok("grid_w"),
                            chase and bok and fresh)

    def _grid_after_change(self):
        """True when the grid meter's reading is newer than the last acknowledged PCS
        setpoint change (the meter and the PCS are read at different times)."""
        chg = self.pcs.act.chg_t
        if chg is None:
            return True
        d = self.site.dev("grid_meter")
        t = d.t.get("p_w") if d is not None else None
        return t is not None and clock.ticks_diff(t, chg) > 0

    def tick(self, now):
        v = self.site.update(now)
        now_r = clock.rel()   # small int on 32-bit: dispatch and energy compute with it
        dt = clock.ticks_diff(now, self.last)
        self.last = now
        self._account(v, dt, now_r)
        ctl = self.cfg["control"]
        pcs = self.pcs
        if not pcs.enabled or ctl["mode"] == "off":
            self.src = SRC_OFF
            self.sp_src = _TEXT[SRC_OFF]
            pcs.want(None, None)
            return
        local = None
        text = None
        if ctl["mode"] == "hold":
            sp = ctl["hold_w"]
            src = SRC_HOLD
        else:
            # available PV: without a pv_inverter nothing applies curtailment
            # (curtail_w is advice in telemetry), so the measured PV is all there is
            # (adding curtail_w without an actuator feeds back and runs away). With
            # one, pvlimit estimates the PV behind its limit; read every step, also
            # while tripped (the trip limit needs the estimate)
            pvm, rat = self.pv.read(self.site, now)
            pv = self.pv.available(v["pv_w"], pvm, rat)
            local, src, text = self._local(now_r, v, pv)
            c, ok = self._cloud(now_r, local)
            if c is None:
                sp = local if local is not None else 0
            elif ok:
                sp, src, text = c, SRC_CLOUD, None
            else:
                sp = local if local is not None else 0
                text = (_TEXT[src] if text is None else text) + \
                    " (cloud ignored: clock not set)"
            if self.pv.enabled:
                self._limit_pv(v, pv, pvm, rat, src, local)
        sp, self.bound_by = self._bound(sp, v, src == SRC_CLOUD)
        if self.safety.tripped:
            sp, src, text = 0, SRC_SAFETY, None
        self._track(sp, local)
        self.decide(sp, src, text)
        pcs.want(sp, 1)
        pcs.check(now, self.site)

    def _track(self, sp, local):
        cur = self.curtail_w
        if self.pv.enabled and local is not None:
            # the PV really shed: the limit in force moves only beyond its dead band
            # (bus writes), so it differs from curtail_w by up to that much; the meter
            # bias must not learn that gap (it would walk the limit up and down)
            cur = self.pv.shed()
        if self.disp is not None and (sp != local or cur != self.curtail_w):
            # the ramp restarts from what the PCS really gets; the meter bias must not
            # learn the gap (trip, hold, cloud, bounds, no data)
            self.disp.track(sp, cur)
