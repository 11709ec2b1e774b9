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


# The dispatcher works in seconds since 2025-01-01 00:00 UTC (a whole number of days, so
# the time of day is unchanged): unix time is above 2**30 and would make every time
# difference a heap-allocated long int on a 32-bit MCU.
DISPATCH_EPOCH = 1735689600


def _drel(t):
    return t - DISPATCH_EPOCH


class App:
    def __init__(self, cfg, source="config.json", report=None):
        self.cfg = cfg
        self.source = source
        self.report = report or []
        self.errors = []        # recent loop errors: [site s, text]
        self.nerr = 0
        self.err_run = 0        # errors in a row (the watchdog resets a stuck loop)
        self.loops = 0
        self.stopping = False
        self.running = False
        sp, ep = hal.clock_setup()
        clock.configure(sp, ep)
        self.t_boot = clock.site_ms()
        self.boot_s = clock.time()
        saf = cfg["safety"]
        self.devs = devices.build(cfg)
        self.masters = {}
        self.poller = select.poll()
        for b in cfg["buses"]:
            try:
                bus = hal.open_bus(b)
            except Exception as e:
                self._err("bus %s: cannot open %s: %s" % (b["name"], b["port"], e))
                continue
            self.masters[b["name"]] = busmaster.BusMaster(
                bus, b["name"], b["baud"], b["timeout_ms"], b["retries"], saf["stale_polls"])
            try:
                self.poller.register(bus.stream, select.POLLIN)
            except Exception:
                pass  # a stream poll cannot watch: the loop still polls it on its timer
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
        self.sent_w = None      # last setpoint written to the PCS
        self.sent_t = 0
        self.run_cmd = None     # last run command written (1/0)
        self.wr_fail = 0
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

    # ---- cloud inputs (link callbacks) -------------------------------------

    def _on_schedule(self, d):
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
        if self.disp is not None:
            self.disp.set_forecast(_drel(f["t0"]), f["step_s"], f["load_w"], _drel(f["exp"]))

    def _on_config(self, c):
        """A new config from the cloud: checked like at boot, written atomically, and
        taken at the next restart (the running loop never half-applies a config)."""
        errs = config.validate(c)
        if not errs:
            errs = check_config(c)
        if not errs:
            config.write_atomic(config.PATH, config.dumps(c))
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
        d = self.pcs
        m = self.masters.get(d.bus) if d is not None else None
        if m is None:
            return False
        try:
            ops = d.writes(point, value)
        except ValueError as e:
            self._err("pcs %s=%d: %s" % (point, value, e))
            return False
        if urgent:
            ops = list(ops)
            ops.reverse()  # each urgent write goes to the front: keep the map's order
        for op in ops:
            m.write(d, op[0], op[1], op[2], self._wr_done, urgent)
        return True

    def _wr_done(self, ok):
        if not ok:
            self.wr_fail += 1

    def stop_pcs(self):
        """0 W then stop, ahead of everything else on the PCS bus."""
        if self.pcs is None:
            return
        # urgent writes jump the queue in reverse order: queue stop first, then 0 W
        self._pcs_write("run", 0, True)
        self._pcs_write("p_set_w", 0, True)
        self.sent_w = 0
        self.run_cmd = 0
        self.sent_t = clock.site_ms()

    def command(self, sp, now):
        if self.safety.tripped:
            if self.run_cmd != 0 or self.sent_w != 0 \
                    or clock.ticks_diff(now, self.sent_t) >= self.refresh:
                self.stop_pcs()
            return
        if self.sent_w != sp or clock.ticks_diff(now, self.sent_t) >= self.refresh:
            self._pcs_write("p_set_w", sp)
            self.sent_w = sp
            self.sent_t = now
            if self.run_cmd != 1:
                self._pcs_write("run", 1)  # after the magnitude: never run a stale one
                self.run_cmd = 1

    # ---- control ------------------------------------------------------------

    def bound(self, sp, v):
        """Local limits no setpoint source may pass; returns (sp, what bound it)."""
        lim = self.cfg["limits"]
        why = ""
        g = v["grid_w"]
        b = v["bat_w"]
        if g is not None and b is not None:
            # grid after the change: g + b - sp (the PCS output replaces grid import)
            if lim["export_max_w"] is not None and sp > g + b + lim["export_max_w"]:
                sp = g + b + lim["export_max_w"]
                why = "export_max"
            if lim["import_max_w"] is not None and sp < g + b - lim["import_max_w"]:
                sp = g + b - lim["import_max_w"]
                why = "import_max"
        lo = -lim["pcs_charge_max_w"]
        hi = lim["pcs_discharge_max_w"]
        if v["ccl_w"] is not None and -v["ccl_w"] > lo:
            lo = -v["ccl_w"]
        if v["dcl_w"] is not None and v["dcl_w"] < hi:
            hi = v["dcl_w"]
        soc = v["soc_cpct"]
        if soc is None:
            lo = hi = 0
        else:
            if soc <= lim["soc_min_cpct"] and hi > 0:
                hi = 0
            if soc >= lim["soc_max_cpct"] and lo < 0:
                lo = 0
        if lo > hi:
            lo = hi = 0
        c = clamp(sp, lo, hi)
        if c != sp:
            why = "limits"
        return c, why

    def control(self, now):
        s = self.site
        v = s.update(now)
        now_s = clock.time()
        dt = clock.ticks_diff(now, self.ctl_last)
        self.ctl_last = now
        ctl = self.cfg["control"]
        if self.energy is not None and s.ok("grid_w", "pv_w", "it_w", "bat_w"):
            try:
                self.energy.step(dt, v["pv_w"] + self.curtail_w, v["pv_w"], v["it_w"],
                                 v["aux_w"] or 0, v["bat_w"], v["grid_w"])
                self.energy.persist(now_s, ENERGY_FILE)  # bounded flash writes
            except Exception as e:
                self._err("energy: %s" % e)
        if self.pcs is None or ctl["mode"] == "off":
            self.sp_src = "off"
            return
        sp = None
        if ctl["mode"] == "hold":
            sp = ctl["hold_w"]
            src = "hold"
        else:
            src = "no data"
            local = None
            if self.disp is not None and s.ok("grid_w", "pv_w", "it_w", "bat_w", "soc_cpct"):
                # available PV (measured + what we curtail), else curtailment toggles
                local = self.disp.step(_drel(now_s), v["pv_w"] + self.curtail_w,
                                       v["it_w"], v["aux_w"] or 0,
                                       v["grid_w"], v["soc_cpct"], v["ccl_w"] or 0,
                                       v["dcl_w"] or 0)
                self.curtail_w = self.disp.curtail_w
                src = "dispatch:" + str(self.disp.reason)
            elif self.disp is None:
                src = "no dispatch"
            if self.link is not None:
                try:
                    c = self.link.setpoint(now_s, local)
                except Exception as e:
                    c = None
                    self._err("link setpoint: %s" % e)
                if c is not None:
                    sp = c
                    src = "cloud"
                    if self.disp is not None:
                        # the ramp restarts from what the PCS really got; the meter
                        # bias must not learn the cloud's offset
                        self.disp.track(c, self.curtail_w)
            if sp is None:
                sp = local if local is not None else 0
        sp, self.bound_by = self.bound(sp, v)
        if self.safety.tripped:
            sp = 0
            src = "safety"
        self.sp_w = sp
        self.sp_src = src
        self.command(sp, now)

    # ---- loop ---------------------------------------------------------------

    def step(self):
        """One pass: buses, safety, control, link. Returns ms it may sleep."""
        wait = 50
        for m in self.masters.values():
            w = m.poll()
            if w < wait:
                wait = w
        now = clock.site_ms()
        # the interlock runs every pass: a fault in fresh BMS/PCS data (or data going
        # stale) stops the PCS at once, not at the next control tick
        if self.safety.check(self.site, now):
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
            self.control(now)
            left = self.period
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
        for m in self.masters.values():
            if m.idle_with_writes():
                wait = 0  # a write was queued after its master was polled: send it now
        st = self.cfg["status_s"]
        if st and clock.ticks_diff(now, self.stat_due) >= 0:
            self.stat_due = clock.ticks_add(now, st * 1000)
            self.publish()
        self.loops += 1
        return wait if wait > 0 else 0

    def telemetry(self):
        v = self.site.v
        rec = {"seq": self.telemetry_seq, "ts": clock.time(),
               "state": None if self.link is None else self.link.state,
               "sp_w": self.sp_w, "curtail_w": self.curtail_w,
               "safety": self.safety.reason if self.safety.tripped else ""}
        # ccl_w/dcl_w: the BMS limits, so schedulers can rebuild the headroom figure
        for k in ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w"):
            rec[k] = v[k]
        if self.params is not None and self.site.ok("pv_w", "it_w", "soc_cpct"):
            h = dispatch.headroom(self.params, v["soc_cpct"], v["pv_w"], v["it_w"],
                                  v["aux_w"] or 0, v["dcl_w"])
            rec["headroom_w"] = h[0]
            rec["headroom_1h_w"] = h[1]
        if self.energy is not None:
            try:
                rec["e"] = self.energy.counters()
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
                    self.err_run = 0
                except MemoryError:
                    gc.collect()
                    self._err("MemoryError in the loop")
                    wait = 0
                except Exception as e:
                    self.err_run += 1
                    self._err("loop: %r" % (e,))
                    wait = 10
                if self.wdt is not None and self.err_run < 20:
                    self.wdt.feed()
                if wait > 0:
                    self.poller.poll(wait)
        finally:
            self.running = False
            if self.energy is not None:
                try:
                    self.energy.save(ENERGY_FILE)
                except Exception:
                    pass
            for m in self.masters.values():
                m.close()

    def status(self, points=True):
        now = clock.site_ms()
        buses = {}
        for name in self.masters:
            m = self.masters[name]
            b = m.stats()
            b["_junk"] = m.junk
            b["_pending_writes"] = m.pending()
            buses[name] = b
        gc.collect()
        heap = {"alloc": gc.mem_alloc(), "free": gc.mem_free()}
        if micropython is not None and hasattr(micropython, "mem_peak"):
            heap["peak"] = micropython.mem_peak()
        return {
            "device_id": self.cfg["device_id"], "platform": hal.PLATFORM,
            "t": clock.time(), "uptime_s": clock.ticks_diff(now, self.t_boot) // 1000,
            "speed": clock.speed(), "loops": self.loops, "running": self.running,
            "config": self.source, "config_errors": self.report,
            "mode": self.cfg["control"]["mode"], "sp_w": self.sp_w, "sp_src": self.sp_src,
            "bound_by": self.bound_by, "sent_w": self.sent_w, "run_cmd": self.run_cmd,
            "write_fail": self.wr_fail, "safety": self.safety.status(now),
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
