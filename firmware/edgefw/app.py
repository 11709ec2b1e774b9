# The gateway's main loop: drives every bus master, keeps the site model, runs the
# safety interlock after each BMS/PCS poll, and every control.period_ms (site time)
# picks the PCS setpoint (cloud setpoint, else local dispatch, bounded by the local
# limits; 0 W while the interlock is tripped). Telemetry and status every status_s.
# main() runs it in a thread when config "console" is true (REPL stays usable: call
# app.status()), else in the foreground (Ctrl-C returns to the REPL).
import gc
import select

from edgefw import busmaster, clock, config, devices, hal, safety
from edgefw.fx import clamp
from edgefw.site import Site

try:
    import micropython
except ImportError:
    micropython = None

try:  # optional parts, owned by others; the gateway runs without them
    from edgefw import dispatch
except ImportError:
    dispatch = None

ENERGY_FILE = "energy.json"
_MAXERR = 6

_app = None


def _opt(name):
    # imported only when used: the link and its MQTT client cost RAM a site without
    # a cloud does not need to spend
    gc.collect()  # compiling a module from source needs one big free block
    try:
        return __import__("edgefw." + name, None, None, (name,))
    except ImportError:
        return None


def check_config(cfg):
    """Extra boot checks: maps and points exist, dispatch parameters valid."""
    errs = devices.check(cfg)
    if dispatch is not None:
        try:
            dispatch.validate_params(cfg.get("site") or {})
        except ValueError as e:
            errs.append(str(e))
    if cfg.get("link"):
        lk = _opt("link")
        f = getattr(lk, "validate_link_cfg", None) if lk is not None else None
        if f is not None:
            try:
                r = f(cfg["link"])
            except ValueError as e:
                r = [str(e)]
            for e in r or ():
                errs.append(e if e.startswith("link") else "link." + e)
    return errs


# The dispatcher works in seconds since 2025-01-01 00:00 UTC (clock.rel(); a whole number
# of days, so the time of day is unchanged): unix time is above 2**30 and would make every
# time difference a heap-allocated long int on a 32-bit MCU. _drel converts the unix times
# the cloud sends, once per message (off the control loop).
DISPATCH_EPOCH = clock.EPOCH


def _drel(t):
    return t - DISPATCH_EPOCH


# Until the wall clock has been set (NTP on a board: its RTC starts at 2000 after a power
# cycle) cloud setpoints, schedules and forecasts are not used: their expiry and windows
# cannot be judged.

_STOP_MS = 2000              # bounded time the loop's exit spends stopping the PCS (real ms)
_BUS_BACKOFF_MAX = 60000     # a failed bus is reopened at most this far apart (real ms)


def clock_valid():
    return clock.valid()


class _PW:
    """One point write to the PCS or the PV inverter (its map may need several frames);
    acknowledged only when every frame was answered without an exception."""
    __slots__ = ("app", "dev", "point", "value", "left", "bad")

    def __init__(self, app, dev, point, value, n):
        self.app = app
        self.dev = dev
        self.point = point
        self.value = value
        self.left = n
        self.bad = False

    def cb(self, ok):
        if self.bad:
            return
        self.left -= 1
        if not ok:
            self.bad = True
            self.app._pw_done(self, False)
        elif self.left <= 0:
            self.app._pw_done(self, True)


class App:
    def __init__(self, cfg, source="config.json", report=None, open_bus=None):
        self.cfg = cfg
        self.source = source
        self.report = report or []
        self.errors = []        # recent loop errors: [site s, text]
        self.nerr = 0
        self.err_run = 0        # errors in a row (the watchdog resets a stuck loop)
        self.pass_err = False
        self.loops = 0
        self.stopping = False
        self.running = False
        sp, ep = hal.clock_setup()
        clock.configure(sp, ep)
        self.t_boot = clock.site_ms()
        self.boot_s = clock.time()
        saf = cfg["safety"]
        self.devs = devices.build(cfg)
        self.open_bus = open_bus or hal.open_bus  # tests hand in their own buses
        self.masters = {}
        self.bus_cfg = {}
        self.down = {}          # bus name -> [real ms ticks of the next reopen, backoff ms]
        self.poller = select.poll()
        self.watched = {}       # bus name -> stream registered with the poller
        for b in cfg["buses"]:
            n = b["name"]
            self.bus_cfg[n] = b
            self.masters[n] = busmaster.BusMaster(
                None, n, b["baud"], b["timeout_ms"], b["retries"], saf["stale_polls"])
            try:
                bus = self.open_bus(b)
            except Exception as e:
                self._err("bus %s: cannot open %s: %s (retrying)" % (n, b["port"], e))
                self.down[n] = [clock.ticks_add(clock.ticks_ms(), 1000), 1000]
                continue
            self._attach(n, bus)
        for d in self.devs:
            m = self.masters.get(d.bus)
            if m is not None:
                m.add(d)
        self.site = Site(self.devs, saf["stale_polls"])
        self.safety = safety.Safety(saf)
        self.pcs = self.site.dev("pcs")
        self.bms = self.site.dev("bms")
        ctl = cfg["control"]
        self.period = ctl["period_ms"]
        self.refresh = ctl["refresh_ms"]
        self.ctl_due = self.t_boot
        self.ctl_last = self.t_boot
        self.stat_due = self.t_boot
        self.sp_w = 0           # last setpoint chosen
        self.sp_src = "boot"
        self.bound_by = ""
        # PCS commands: what the loop wants, and what the PCS acknowledged (None =
        # unknown: never written, or the last write failed); pend = write in flight
        self.want_w = None
        self.want_run = None
        self.ack = {"p_set_w": None, "run": None}
        self.ack_t = {"p_set_w": 0, "run": 0}
        self.pend = {"p_set_w": None, "run": None}
        # PV inverter limit (role pv_inverter): curtail_w applied through edgefw/pvlimit.py
        # in mode auto; its writes share the acknowledged write path (lim_cpct, lim_ena)
        self.pvinv = self.site.dev("pv_inverter")
        self.pvlimit = _opt("pvlimit") if self.pvinv is not None else None
        self.pvl = self.pvlimit.PvLimit() if self.pvlimit is not None else None
        self.pv_limit_w = None   # limit asked for (W), None = released
        self.pv_want = (None, None)  # (lim_cpct, lim_ena) wanted; ena None = nothing yet
        self.pv_avail_w = None   # PV available behind the limit (estimate), while limited
        for k in ("lim_cpct", "lim_ena"):
            self.ack[k] = None
            self.ack_t[k] = 0
            self.pend[k] = None
        self.wr_fail = 0
        self.pcs_fails = 0      # failed PCS writes in a row
        self.pcs_retry = 0      # real ms ticks before which a dead PCS is not retried
        self.fail_cyc = None    # bus cycle count at the last failed write (retry pacing)
        self.fail_t = 0
        self.chg_t = None       # site ms when the acknowledged setpoint last changed
        self.prev_w = None      # the acknowledged setpoint before that change
        self.mismatch_t = None  # site ms since the PCS p_w disagrees with the command
        self.mismatches = 0
        self.disp = None
        self.params = None
        if dispatch is not None:
            try:
                self.params = dispatch.validate_params(cfg.get("site") or {})
                self.disp = dispatch.Dispatcher(self.params)
            except Exception as e:
                self._err("dispatch: %s" % e)
        self.link = None
        lc = cfg.get("link")
        lk = _opt("link") if lc and lc.get("host") else None
        if lk is not None:
            try:
                self.link = lk.Link(lc, cfg["device_id"], ".", cfg["limits"])
                self.link.on_schedule = self._on_schedule
                self.link.on_forecast = self._on_forecast
                self.link.on_config = self._on_config
                w = self.link.tls_warning()
                if w:
                    self._err("link: %s" % w)  # loud: console, status errors (docs/mqtt.md)
            except Exception as e:
                self._err("link: %s" % e)
        self.energy = None
        en = _opt("energy") if self.params is not None else None
        if en is not None:
            try:
                self.energy = en.Energy(self.params)
                try:
                    self.energy.load(ENERGY_FILE)
                except Exception:
                    pass  # first boot: counters start at 0
            except Exception as e:
                self._err("energy: %s" % e)
        self.wdt = hal.Watchdog(cfg["wdt_ms"]) if cfg["wdt_ms"] else None
        self.curtail_w = 0
        self.telemetry_seq = 0
        # network and wall clock (ESP32: WLAN station + NTP; unix: the host's)
        self.net_cfg = cfg.get("net") or {}
        self.time_set = False
        self.ntp_due = clock.ticks_ms()
        try:
            hal.net_connect(self.net_cfg)  # starts the station; never waits for it
        except Exception as e:
            self._err("net: %r" % (e,))
        # a new config runs on trial: it becomes the last good copy only after trial_s of
        # healthy running (config.confirm); a reboot before that falls back (config.boot)
        self.nloop_err = 0
        self.trial_due = None
        if config.on_trial():
            self.trial_due = clock.ticks_add(clock.site_ms(), cfg.get("trial_s", 600) * 1000)
        ts = config.trial_status()
        if ts.get("state") == "failed":
            self._err("config trial failed: %s" % ts.get("why"))
            if self.link is not None:
                try:
                    self.link.event("config", {"trial": "failed", "why": ts.get("why")})
                except Exception:
                    pass

    # ---- buses --------------------------------------------------------------

    def _attach(self, name, bus):
        self.masters[name].set_bus(bus)
        try:
            self.poller.register(bus.stream, select.POLLIN)
            self.watched[name] = bus.stream
        except Exception:
            pass  # a stream poll cannot watch: the loop still polls it on its timer

    def _bus_fail(self, name, e):
        """A bus raised: its devices go stale, its writes fail, it is closed and
        reopened with backoff. Reported once per outage; the other buses go on."""
        m = self.masters[name]
        m.fail()
        bus = m.bus
        m.bus = None
        st = self.watched.pop(name, None)
        if st is not None:
            # only what was registered: MicroPython 1.29's poll.unregister of an object
            # it never took crashes the interpreter (segfault)
            try:
                self.poller.unregister(st)
            except Exception:
                pass
        if bus is not None:
            try:
                bus.close()
            except Exception:
                pass
        if name not in self.down:
            self._err("bus %s: %r; reopening with backoff" % (name, e))
            self.down[name] = [clock.ticks_add(clock.ticks_ms(), 1000), 1000]

    def _reopen(self, name):
        d = self.down[name]
        now = clock.ticks_ms()
        if clock.ticks_diff(now, d[0]) < 0:
            return False
        try:
            bus = self.open_bus(self.bus_cfg[name])
        except Exception:
            b = d[1] * 2
            d[1] = b if b < _BUS_BACKOFF_MAX else _BUS_BACKOFF_MAX
            d[0] = clock.ticks_add(now, d[1])
            return False
        del self.down[name]
        self._attach(name, bus)
        return True

    # ---- cloud inputs (link callbacks) -------------------------------------

    def _on_schedule(self, d):
        if not clock_valid():
            self._err("schedule ignored: wall clock not set yet")
            return
        if self.disp is not None:
            ws = []
            for w in d.get("windows") or []:
                w = dict(w)
                for k in ("t0", "t1", "exp"):
                    if w.get(k) is not None:
                        w[k] = _drel(w[k])
                ws.append(w)
            exp = d.get("exp")
            self.disp.set_schedule(ws, None if exp is None else _drel(exp))

    def _on_forecast(self, f):
        if not clock_valid():
            return  # the forecast's t0/exp cannot be placed without a set clock
        if self.disp is not None:
            self.disp.set_forecast(_drel(f["t0"]), f["step_s"], f["load_w"], _drel(f["exp"]))

    def _on_config(self, c):
        """A new config from the cloud: checked like at boot, written atomically, and
        taken at the next restart (the running loop never half-applies a config)."""
        errs = config.validate(c)
        if not errs:
            errs = check_config(c)
        if not errs:
            config.write_json(config.PATH, c, True)  # in pieces: no 5-8 KB string
        return errs

    # ---- errors -------------------------------------------------------------

    def _err(self, text):
        self.nerr += 1
        e = self.errors
        e.append([clock.time(), text])
        if len(e) > _MAXERR:
            e.pop(0)
        if not self.cfg.get("console"):
            print("edgegw:", text)

    # ---- PCS commands -------------------------------------------------------

    def _pcs_write(self, point, value, urgent=False):
        return self._dev_write(self.pcs, point, value, urgent)

    def _dev_write(self, d, point, value, urgent=False):
        """Queue one point write (PCS or PV inverter); _pw_done gets its outcome."""
        m = self.masters.get(d.bus) if d is not None else None
        if m is None:
            return False
        try:
            ops = d.writes(point, value)
        except ValueError as e:
            self._err("%s %s=%d: %s" % (d.role, point, value, e))
            return False
        pw = _PW(self, d, point, value, len(ops))
        self.pend[point] = pw
        if urgent:
            ops = list(ops)
            ops.reverse()  # each urgent write goes to the front: keep the map's order
        for op in ops:
            m.write(d, op[0], op[1], op[2], pw.cb, urgent)
        return True

    def _pw_done(self, pw, ok):
        p = pw.point
        if ok:
            if p == "p_set_w" and self.ack[p] != pw.value:
                self.chg_t = clock.site_ms()
                self.prev_w = self.ack[p]
            self.ack[p] = pw.value
            self.ack_t[p] = clock.site_ms()
            if pw.dev is self.pcs:
                self.pcs_fails = 0
                self.fail_cyc = None
        else:
            self.wr_fail += 1
            # unknown now: written again (the PV inverter at the next control step)
            self.ack[p] = None
            if pw.dev is self.pcs:
                self.pcs_fails += 1
                # the next bus turn: after a read finished on the bus (or 250 ms), so a
                # refusing PCS never starves the BMS reads on its bus
                m = self.masters.get(self.pcs.bus)
                self.fail_cyc = m.cycles if m is not None else 0
                self.fail_t = clock.ticks_ms()
                if self.pcs_fails >= 3:
                    self.pcs_retry = clock.ticks_add(clock.ticks_ms(), 500)
        if self.pend[p] is pw:
            self.pend[p] = None

    def stop_pcs(self):
        """0 W then stop, ahead of everything else on the PCS bus (a new trip, the loop's
        exit); _pcs_service re-sends both every bus turn until the PCS acknowledges."""
        if self.pcs is None:
            return
        # urgent writes jump the queue: queue stop first, then 0 W (0 W goes out first)
        self._pcs_write("run", 0, True)
        self._pcs_write("p_set_w", 0, True)

    def _pcs_service(self, now):
        """Every pass: write what the PCS has not acknowledged (run also when its readback
        differs); the setpoint also every refresh_ms (PCS revert timers). Tripped: 0 W
        and stop. run = 1 only once the magnitude is acknowledged."""
        if self.pcs is None:
            return
        tr = self.safety.tripped
        if tr:
            ww, wr = 0, 0
        else:
            ww, wr = self.want_w, self.want_run
        if ww is None and wr is None:
            return
        if self.pcs_fails >= 3 and self.pcs.stale() \
                and clock.ticks_diff(clock.ticks_ms(), self.pcs_retry) < 0:
            return  # a PCS that does not answer costs a timeout per try: pace them
        if self.fail_cyc is not None:
            m = self.masters.get(self.pcs.bus)
            if m is not None and m.cycles == self.fail_cyc \
                    and clock.ticks_diff(clock.ticks_ms(), self.fail_t) < 250:
                return
        ack = self.ack
        pend = self.pend
        # readback: a PCS that shows another run state than it acknowledged (power
        # cycle, local panel) gets the command again (p_set_w is not compared: a PCS may
        # clamp or round it; it is rewritten every refresh_ms anyway)
        t = self.pcs.t.get("run")
        if ack["run"] is not None and pend["run"] is None and t is not None \
                and self.pcs.values.get("run") != ack["run"] \
                and clock.ticks_diff(t, self.ack_t["run"]) > 0:
            ack["run"] = None
        todo_w = ww is not None and pend["p_set_w"] is None and (
            ack["p_set_w"] != ww
            or clock.ticks_diff(now, self.ack_t["p_set_w"]) >= self.refresh)
        todo_r = wr is not None and pend["run"] is None and ack["run"] != wr
        if todo_r and wr == 1 and (todo_w or pend["p_set_w"] is not None
                                   or ack["p_set_w"] != ww):
            todo_r = False  # never run on a magnitude the PCS has not confirmed
        if tr:
            if todo_r:
                self._pcs_write("run", wr, True)
            if todo_w:
                self._pcs_write("p_set_w", ww, True)
        else:
            if todo_w:
                self._pcs_write("p_set_w", ww)
            if todo_r:
                self._pcs_write("run", wr)

    def _pcs_check(self, now):
        """Event when the PCS's measured p_w does not follow the acknowledged command for
        3 control periods (a PCS in local mode, a lost revert timer)."""
        a = self.ack["p_set_w"]
        v, _, q = self.site.role_point("pcs", "p_w", now)
        if a is None or v is None or q != 0 or self.ack["run"] is None or (
                self.chg_t is not None
                and clock.ticks_diff(now, self.chg_t) < 3 * self.period):
            self.mismatch_t = None  # unknown, or still settling after a change
            return
        want = a if self.ack["run"] == 1 else 0
        tol = 200 + abs(want) // 10
        if abs(v - want) <= tol:
            self.mismatch_t = None
            return
        if self.mismatch_t is None:
            self.mismatch_t = now
        elif self.mismatch_t is not False and \
                clock.ticks_diff(now, self.mismatch_t) >= 3 * self.period:
            self.mismatch_t = False  # reported; again only after it followed once
            self.mismatches += 1
            self._err("pcs mismatch: p_w %d W, commanded %d W" % (v, want))
            if self.link is not None:
                try:
                    self.link.event("pcs_mismatch", {"p_w": v, "sp_w": want})
                except Exception:
                    pass

    def _shutdown_pcs(self):
        """The loop is ending: 0 W and stop, waiting at most _STOP_MS for the PCS to
        acknowledge (nothing supervises it afterwards)."""
        if self.pcs is None or self.cfg["control"]["mode"] == "off":
            return
        self.want_w = 0
        self.want_run = 0
        self.sp_w = 0
        self.sp_src = "stopped"
        name = self.pcs.bus
        m = self.masters.get(name)
        if m is None:
            return
        t0 = clock.ticks_ms()
        if name in self.down:
            self.down[name][0] = t0
            if not self._reopen(name):
                return
        self.stop_pcs()
        while clock.ticks_diff(clock.ticks_ms(), t0) < _STOP_MS:
            if self.ack["p_set_w"] == 0 and self.ack["run"] == 0:
                return
            try:
                w = m.poll()
                self._pcs_service(clock.site_ms())
            except Exception:
                return
            clock.sleep_ms(1 if w else 0)

    # ---- control ------------------------------------------------------------

    def _export_floor(self):
        """Lowest grid power (W, - = export) any setpoint may lead to, or None: -export_max_w,
        and with export not allowed (site.export_allowed false) the dispatch
        export_margin_w of import."""
        f = None
        x = self.cfg["limits"]["export_max_w"]
        if x is not None:
            f = -x
        p = self.params
        if p is not None:
            ok, margin = p["export_allowed"], p["export_margin_w"]
        else:
            ok, margin = (self.cfg.get("site") or {}).get("export_allowed") is True, 0
        if not ok and (f is None or margin > f):
            f = margin
        return f

    def _grid_after_change(self):
        """True when the grid meter's reading is newer than the last acknowledged PCS
        setpoint change (the meter and the PCS are read at different times)."""
        if self.chg_t is None:
            return True
        d = self.site.dev("grid_meter")
        t = d.t.get("p_w") if d is not None else None
        return t is not None and clock.ticks_diff(t, self.chg_t) > 0

    def _pcs_range(self, v):
        """(lo, hi) W the PCS may be set to now: PCS limits, BMS charge/discharge limits,
        no discharge at/below SOC min, no charge at/above SOC max; no SOC: (0, 0)."""
        lim = self.cfg["limits"]
        lo = -lim["pcs_charge_max_w"]
        hi = lim["pcs_discharge_max_w"]
        if v["ccl_w"] is not None and -v["ccl_w"] > lo:
            lo = -v["ccl_w"]
        if v["dcl_w"] is not None and v["dcl_w"] < hi:
            hi = v["dcl_w"]
        soc = v["soc_cpct"]
        if soc is None:
            return 0, 0
        if soc <= lim["soc_min_cpct"] and hi > 0:
            hi = 0
        if soc >= lim["soc_max_cpct"] and lo < 0:
            lo = 0
        if lo > hi:
            return 0, 0
        return lo, hi

    def bound(self, sp, v, chase=False):
        """Local limits no setpoint source (cloud, hold, dispatch) may pass; returns
        (sp, what bound it). Export: grid after = grid now + (PCS now - sp) must stay at
        or above _export_floor(); PCS now = the lowest of the acknowledged setpoint, the
        measured p_w and, while the grid reading is older than the last acknowledged
        step up, the setpoint before that step (meter and PCS are read at different
        times). Without chase (dispatch, hold) the bound never asks for more charging
        than the PCS does now: the dispatcher charges the surplus itself. With chase (a
        cloud setpoint in force: nothing else would) it does, from a grid reading newer
        than the last setpoint change and the measured p_w, up to the PCS/BMS limits and
        SOC max; PV beyond that is curtailed (_cloud_curtail). With the grid value stale
        or unknown: no discharge, and no less charging than now (sp <= min(PCS now, 0))."""
        lim = self.cfg["limits"]
        s = self.site
        why = ""
        a = self.ack["p_set_w"]
        if a is not None and self.ack["run"] == 0:
            a = 0
        b = a
        if a is not None and self.prev_w is not None and self.prev_w < a \
                and not self._grid_after_change():
            b = self.prev_w  # the meter still shows the PCS before its last step up
        if s.ok("bat_w"):
            bm = v["bat_w"]
            if b is None or bm < b:
                b = bm
        gok = s.ok("grid_w") and b is not None
        g = v["grid_w"]
        if gok and lim["import_max_w"] is not None and sp < g + b - lim["import_max_w"]:
            sp = g + b - lim["import_max_w"]
            why = "import_max"
        lo, hi = self._pcs_range(v)
        floor = self._export_floor()
        if floor is not None:
            if gok:
                x = g + b - floor
                keep = b if b < 0 else 0
                if x < keep:
                    x = keep
                    if chase and s.ok("bat_w") and self._grid_after_change():
                        # the meter's grid and the PCS's measured power (both after the
                        # last change): the charge that brings the grid to the floor
                        xc = g + v["bat_w"] - floor
                        if xc < keep:
                            x = xc
            else:
                x = a if a is not None and a < 0 else 0
            if sp > x:
                sp = x
                why = "export"
        c = clamp(sp, lo, hi)
        if c != sp:
            why = "limits"
        return c, why

    def _cloud_curtail(self, v, pv):
        """PV to shed (W) under a cloud setpoint on a site with an export floor: what the
        load, the battery at its charge limit (the bound charges up to it) and the floor
        cannot take. pv = the PV available (behind the limit: pvlimit's estimate). The
        limit this gives (estimate - curtail) does not depend on the estimate: a fixed
        point, as with the dispatcher's curtail_w (docs/firmware.md)."""
        floor = self._export_floor()
        if floor is None:
            return 0
        lo = self._pcs_range(v)[0]
        if pv is None:
            pv = self.pvl.est_w or 0
        x = pv - (v["it_w"] or 0) - (v["aux_w"] or 0) + lo + floor
        return x if x > 0 else 0

    def control(self, now):
        s = self.site
        v = s.update(now)
        now_r = clock.rel()   # small int on 32-bit: dispatch and energy compute with it
        dt = clock.ticks_diff(now, self.ctl_last)
        self.ctl_last = now
        ctl = self.cfg["control"]
        if self.energy is not None and s.ok("grid_w", "pv_w", "it_w", "bat_w"):
            # available PV: behind an inverter limit, the last step's estimate
            pva = self.pv_avail_w if self.pv_avail_w is not None else v["pv_w"]
            try:
                self.energy.step(dt, pva, v["pv_w"], v["it_w"],
                                 v["aux_w"] or 0, v["bat_w"], v["grid_w"])
                self.energy.persist(now_r, ENERGY_FILE)  # bounded flash writes
            except Exception as e:
                self._err("energy: %s" % e)
        if self.pcs is None or ctl["mode"] == "off":
            self.sp_src = "off"
            self.want_w = self.want_run = None
            return
        sp = None
        local = None
        if ctl["mode"] == "hold":
            sp = ctl["hold_w"]
            src = "hold"
        else:
            src = "no data"
            pvm = rat = None
            self.pv_avail_w = None
            # available PV: without a pv_inverter nothing applies curtailment
            # (curtail_w is advice in telemetry), so the measured PV is all there is
            # (adding curtail_w without an actuator feeds back and runs away). With
            # one, pvlimit estimates the PV behind its limit (kept from before the
            # limit while the inverter sits at it: a fixed point, not a runaway); read
            # every step, also while tripped (the trip limit needs the estimate)
            pv = v["pv_w"]
            if self.pvl is not None:
                pvm, rat = self._pv_read(now)
                if pvm is not None:
                    est = self.pvl.available(pvm, rat)
                    if pv is not None:
                        pv = pv - pvm + est
                        if self.pvl.limited:
                            self.pv_avail_w = pv
            if self.disp is not None and s.ok("grid_w", "pv_w", "it_w", "bat_w", "soc_cpct"):
                local = self.disp.step(now_r, pv,
                                       v["it_w"], v["aux_w"] or 0,
                                       v["grid_w"], v["soc_cpct"], v["ccl_w"] or 0,
                                       v["dcl_w"] or 0)
                self.curtail_w = self.disp.curtail_w
                src = "dispatch:" + str(self.disp.reason)
            elif self.disp is None:
                src = "no dispatch"
            if self.link is not None:
                try:
                    c = self.link.setpoint(now_r, local, True)
                except Exception as e:
                    c = None
                    self._err("link setpoint: %s" % e)
                if c is not None:
                    if clock_valid():
                        sp = c
                        src = "cloud"
                    else:
                        src += " (cloud ignored: clock not set)"
            if sp is None:
                sp = local if local is not None else 0
            if self.pvl is not None:
                # a trip: the PCS stops, so on a zero-export site the PV is held to the
                # load (what the battery took would go out); a cloud setpoint: the bound
                # charges up to the limits and the PV beyond that is shed
                # (_cloud_curtail); else the dispatcher's curtail_w
                if pvm is not None and self.safety.tripped:
                    self.pvl.limit(self._trip_curtail(v), rat)
                elif src == "cloud":
                    c = self._cloud_curtail(v, pv)
                    self.curtail_w = c
                    if self._export_floor() is None:
                        self.pvl.release()  # export allowed without a cap: nothing to hold
                    elif pvm is not None:
                        self.pvl.limit(c, rat)
                elif pvm is not None and local is not None:
                    self.pvl.limit(self.curtail_w, rat)
                self._pv_service(rat)
        sp, self.bound_by = self.bound(sp, v, src == "cloud")
        if self.safety.tripped:
            sp = 0
            src = "safety"
        cur = self.curtail_w
        if self.pvl is not None and local is not None:
            # the PV really shed: the limit in force moves only beyond its dead band
            # (bus writes), so it differs from curtail_w by up to that much; the meter
            # bias must not learn that gap (it would walk the limit up and down)
            L = self.pvl.lim_w
            cur = 0 if L is None else max(0, (self.pvl.est_w or 0) - L)
        if self.disp is not None and (sp != local or cur != self.curtail_w):
            # the ramp restarts from what the PCS really gets; the meter bias must not
            # learn the gap (trip, hold, cloud, bounds, no data)
            self.disp.track(sp, cur)
        self.sp_w = sp
        self.sp_src = src
        self.want_w = sp
        self.want_run = 1
        self._pcs_check(now)

    # ---- PV inverter limit ----------------------------------------------------

    def _trip_curtail(self, v):
        """PV to shed while tripped (PCS at 0 W): on a zero-export site all of the PV
        estimate above the load less the export margin; none where export is allowed."""
        p = self.params
        if p is None or p["export_allowed"]:
            return 0
        est = self.pvl.est_w or 0
        x = est - (v["it_w"] or 0) - (v["aux_w"] or 0) + p["export_margin_w"]
        return x if x > 0 else 0

    def _pv_read(self, now):
        """(AC power W, rating W) of the PV inverter, or (None, None) when either is
        unknown, stale or the rating is not positive."""
        d = self.pvinv
        m, _, q = self.site.point(d, "p_w", now)
        r, _, qr = self.site.point(d, "wmax_w", now)
        if m is None or r is None or q != 0 or qr != 0 or r <= 0:
            return None, None
        return m, r

    def _pv_service(self, rat):
        """Write the wanted limit through the acknowledged write path: lim_cpct (0.01 %
        of the rating, rounded down, also to the map's step) first, lim_ena = 1 only
        once that is acknowledged; released: lim_ena = 0. Unacknowledged writes and a
        readback that differs from the acknowledged value (power cycle) go again at the
        next control step; nothing while the inverter is stale."""
        d = self.pvinv
        L = self.pvl.lim_w
        c, e = self.pv_want
        if L is None:
            c, e = None, 0
        elif rat is not None:
            c = self.pvlimit.pct_cpct(L, rat)
            g = d.map.points["lim_cpct"].get("mul", 1)
            c -= c % g
            e = 1
        self.pv_limit_w = L
        self.pv_want = (c, e)
        if e is None or (e == 1 and c is None) or d.stale():
            return
        ack = self.ack
        pend = self.pend
        for p, w in (("lim_cpct", c), ("lim_ena", e)):
            t = d.t.get(p)
            if w is not None and ack[p] is not None and pend[p] is None and t is not None \
                    and d.values.get(p) != ack[p] and clock.ticks_diff(t, self.ack_t[p]) > 0:
                ack[p] = None
        if c is not None and pend["lim_cpct"] is None and ack["lim_cpct"] != c:
            self._dev_write(d, "lim_cpct", c)
        # lim_ena = 1 once lim_cpct is acknowledged (an enable ahead of a failed percent
        # would apply whatever percent the inverter held); on a trip right behind it (the
        # bus keeps the order): the stopped PCS no longer takes the surplus, every control
        # step of waiting exports it
        pc = pend["lim_cpct"]
        if pend["lim_ena"] is None and ack["lim_ena"] != e and (
                e == 0 or (ack["lim_cpct"] == c and pc is None)
                or (self.safety.tripped and pc is not None and pc.value == c)):
            self._dev_write(d, "lim_ena", e)

    # ---- loop ---------------------------------------------------------------

    def _net_tick(self):
        # NTP until the clock is set (every 60 s), then every 6 h; each try is bounded
        # by hal.set_time's own timeout (about 1 s on a board)
        self.ntp_due = clock.ticks_add(clock.ticks_ms(), 21600000 if self.time_set else 60000)
        try:
            if hal.net_up(self.net_cfg) and hal.set_time():
                self.time_set = True
        except Exception as e:
            self._err("net/ntp: %r" % (e,))

    def step(self):
        """One pass: buses (each isolated), safety (always), control, PCS writes, link.
        Returns ms it may sleep."""
        wait = 50
        self.pass_err = False
        for name in self.masters:
            m = self.masters[name]
            if name in self.down and not self._reopen(name):
                continue
            try:
                w = m.poll()
            except Exception as e:
                self._bus_fail(name, e)
                w = 50
            if w < wait:
                wait = w
        now = clock.site_ms()
        # the interlock runs every pass: a fault in fresh BMS/PCS data (or data going
        # stale) stops the PCS at once, not at the next control tick
        try:
            new = self.safety.check(self.site, now)
        except Exception as e:
            self.pass_err = True
            new = self.safety.trip("interlock error %r" % (e,))
        if new:
            self._err("safety trip: %s" % self.safety.reason)
            self.sp_w = 0
            self.sp_src = "safety"
            self.stop_pcs()
            wait = 0
        left = clock.ticks_diff(self.ctl_due, now)
        if left <= 0:
            self.ctl_due = clock.ticks_add(self.ctl_due, self.period)
            if clock.ticks_diff(now, self.ctl_due) > 0:
                self.ctl_due = clock.ticks_add(now, self.period)  # overran: skip, no burst
            try:
                self.control(now)
            except Exception as e:
                self.pass_err = True
                self._err("control: %r" % (e,))
            left = self.period
        try:
            self._pcs_service(now)  # un-acknowledged writes go again every bus turn
        except Exception as e:
            self.pass_err = True
            self._err("pcs: %r" % (e,))
        lw = left // clock.speed()
        if lw < wait:
            wait = lw
        if self.link is not None:
            try:
                self.link.poll(clock.ticks_ms())
            except Exception as e:
                self._err("link: %s" % e)
            if wait > 20:
                wait = 20
        for name in self.masters:
            if name not in self.down and self.masters[name].idle_with_writes():
                wait = 0  # a write was queued after its master was polled: send it now
        if clock.ticks_diff(clock.ticks_ms(), self.ntp_due) >= 0:
            self._net_tick()
        st = self.cfg["status_s"]
        if st and clock.ticks_diff(now, self.stat_due) >= 0:
            self.stat_due = clock.ticks_add(now, st * 1000)
            try:
                self.publish()
            except Exception as e:
                self._err("publish: %r" % (e,))
        self.loops += 1
        if self.trial_due is not None and clock.ticks_diff(now, self.trial_due) >= 0:
            self._trial_check(now)
        return wait if wait > 0 else 0

    def _trial_check(self, now):
        ok = self.nloop_err == 0
        for m in self.masters.values():
            if m.bus is None:
                ok = False
            for st in m.stats().values():
                if not st["ok"] or st["stale"]:
                    ok = False
        if not ok:
            self.trial_due = clock.ticks_add(now, 10000)  # not healthy yet: look again
            return
        self.trial_due = None
        if config.confirm():
            if not self.cfg.get("console"):
                print("edgegw: config confirmed after its trial")
            if self.link is not None:
                try:
                    self.link.event("config", {"trial": "confirmed"})
                except Exception:
                    pass

    def telemetry(self):
        v = self.site.v
        rec = {"seq": self.telemetry_seq, "ts": clock.time(),
               "state": None if self.link is None else self.link.state,
               "sp_w": self.sp_w, "curtail_w": self.curtail_w,
               "pv_limit_w": self.pv_limit_w,
               "safety": self.safety.reason if self.safety.tripped else ""}
        # ccl_w/dcl_w: the BMS limits, so schedulers can rebuild the headroom figure
        for k in ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w"):
            rec[k] = v[k]
        if self.params is not None and self.site.ok("pv_w", "it_w", "soc_cpct"):
            # curtailed PV is green headroom too: the available PV behind a limit
            pv = self.pv_avail_w if self.pv_avail_w is not None else v["pv_w"]
            h = dispatch.headroom(self.params, v["soc_cpct"], pv, v["it_w"],
                                  v["aux_w"] or 0, v["dcl_w"])
            rec["headroom_w"] = h[0]
            rec["headroom_1h_w"] = h[1]
        if self.energy is not None:
            try:
                rec["e"] = self.energy.counters()
                rec["g"] = self.energy.hourly(self.telemetry_seq)  # hourly green ledger
            except Exception:
                pass
        self.telemetry_seq += 1
        return rec

    def publish(self):
        rec = self.telemetry()
        if self.link is not None:
            try:
                self.link.telemetry(rec)
                if "headroom_w" in rec:
                    self.link.headroom({"headroom_w": rec["headroom_w"],
                                        "headroom_1h_w": rec["headroom_1h_w"]})
            except Exception as e:
                self._err("link telemetry: %s" % e)
        if not self.cfg.get("console"):
            print("edgegw t=%d grid=%s pv=%s it=%s bat=%s soc=%s sp=%d %s" % (
                rec["ts"], rec["grid_w"], rec["pv_w"], rec["it_w"], rec["bat_w"],
                rec["soc_cpct"], rec["sp_w"], self.sp_src))

    def run(self):
        self.running = True
        try:
            while not self.stopping:
                try:
                    wait = self.step()
                    self.err_run = self.err_run + 1 if self.pass_err else 0
                except MemoryError:
                    gc.collect()
                    self.nloop_err += 1
                    self._err("MemoryError in the loop")
                    wait = 0
                except Exception as e:
                    self.err_run += 1
                    self.nloop_err += 1
                    self._err("loop: %r" % (e,))
                    wait = 10
                if self.wdt is not None and self.err_run < 20:
                    self.wdt.feed()
                clock.idle(self.poller, wait)  # poll until due (virtual gateway: lockstep)
        finally:
            # Ctrl-C, app.stop() or an error out of the loop: nothing supervises the
            # battery after this, so the PCS goes to 0 W and stop first (bounded time)
            try:
                self._shutdown_pcs()
            except BaseException:
                pass
            self.running = False
            if self.energy is not None:
                try:
                    self.energy.save(ENERGY_FILE)
                except Exception:
                    pass
            for m in self.masters.values():
                try:
                    m.close()
                except Exception:
                    pass
            clock.idle(None, None)

    def status(self, points=True):
        now = clock.site_ms()
        buses = {}
        for name in self.masters:
            m = self.masters[name]
            b = m.stats()
            b["_junk"] = m.junk
            b["_pending_writes"] = m.pending()
            b["_errors"] = m.errors
            b["_down"] = name in self.down
            buses[name] = b
        gc.collect()
        heap = {}
        if hasattr(gc, "mem_alloc"):  # MicroPython (CPython runs the dual tests)
            heap = {"alloc": gc.mem_alloc(), "free": gc.mem_free()}
        if micropython is not None and hasattr(micropython, "mem_peak"):
            heap["peak"] = micropython.mem_peak()
        return {
            "device_id": self.cfg["device_id"], "platform": hal.PLATFORM,
            "t": clock.time(), "uptime_s": clock.ticks_diff(now, self.t_boot) // 1000,
            "speed": clock.speed(), "loops": self.loops, "running": self.running,
            "config": self.source, "config_errors": self.report,
            "config_trial": config.trial_status(),
            "mode": self.cfg["control"]["mode"], "sp_w": self.sp_w, "sp_src": self.sp_src,
            "bound_by": self.bound_by,
            # the import cap the dispatcher holds (raised above site.grid_cap_w until sunset
            # when its plan shows the configured one cannot be held)
            "cap_w": None if self.disp is None else self.disp.cap_w(),
            # sent_w / run_cmd: what the PCS acknowledged (None = unknown: never written
            # or the last write failed); want_*: what the loop asks for
            "sent_w": self.ack["p_set_w"], "run_cmd": self.ack["run"],
            "want_w": 0 if self.safety.tripped else self.want_w,
            "want_run": 0 if self.safety.tripped else self.want_run,
            "pcs_pending": self.pend["p_set_w"] is not None or self.pend["run"] is not None,
            "pcs_mismatches": self.mismatches,
            # curtail_w: PV the dispatcher wants shed; pv_limit_w: the inverter limit
            # asked for (None = released); pv_lim: (lim_cpct, lim_ena) wanted / acknowledged
            "curtail_w": self.curtail_w, "pv_limit_w": self.pv_limit_w,
            "pv_lim": None if self.pvinv is None else {
                "want": list(self.pv_want),
                "ack": [self.ack["lim_cpct"], self.ack["lim_ena"]]},
            "write_fail": self.wr_fail, "clock_valid": clock_valid(),
            "time_set": self.time_set, "safety": self.safety.status(now),
            "site": self.site.snapshot(now, points),
            "buses": buses,
            "link": None if self.link is None else self.link.stats(),
            "errors": self.errors, "nerr": self.nerr, "heap": heap,
            "energy": None if self.energy is None else self.energy.counters(),
        }


def boot():
    """Choose the config (config.json, last good, factory default) and build the app."""
    global _app
    cfg, source, report = config.boot(check_config)
    _app = App(cfg, source, report)
    for r in report:
        print("edgegw config:", r)
    print("edgegw: config from %s, %d devices on %d buses" % (
        source, len(_app.devs), len(_app.masters)))
    return _app


def start():
    """Run the loop in a thread; the REPL stays free (app.status(), app.stop())."""
    import _thread
    a = _app or boot()
    _thread.start_new_thread(a.run, ())
    return a


def stop():
    if _app is not None:
        _app.stopping = True


def status(points=True):
    if _app is None:
        return {"running": False}
    return _app.status(points)


def print_status(points=True, out=None):
    """status() as one JSON line on out (stdout), written in pieces by json.dump: the whole
    text (about 5 KB) as one string would need a heap block that big, which a fragmented
    gateway heap may not have (edgegw status, the virtual gateway's console read this)."""
    import json
    import sys
    out = out or sys.stdout
    json.dump(status(points), out)
    out.write("\n")


def main():
    a = boot()
    if a.cfg.get("console"):
        start()
        print("edgegw: running in the background; app.status() for values")
        return
    try:
        a.run()
    except KeyboardInterrupt:
        print("edgegw: stopped (Ctrl-C); app.main() restarts")
