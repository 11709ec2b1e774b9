# The gateway's main loop: builds the parts (docs/firmware.md, module map) and runs the
# pass: every bus (buses.py), the safety interlock after each poll, every
# control.period_ms (site time) one control tick (control.py: cloud setpoint, else local
# dispatch, bounded by the local limits; 0 W while the interlock is tripped), the PCS
# writes (pcsctl.py), the link, NTP, telemetry every status_s, the config trial
# (health.py). main() runs it in a thread when config "console" is true (REPL stays
# usable: call app.status()), else in the foreground (Ctrl-C returns to the REPL).
import gc

from edgefw import buses, clock, config, control, devices, hal, health, pcsctl, pvctl
from edgefw import safety, telemetry
from edgefw.nulls import NO_ENERGY, NO_LINK, NO_OTA
from edgefw.site import Site

try:
    import micropython
except ImportError:
    micropython = None

try:  # optional parts, owned by others; the gateway runs without them
    from edgefw import dispatch
except ImportError:
    dispatch = None

ENERGY_FILE = control.ENERGY_FILE

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
        errs.extend(dispatch.check_params(cfg.get("site") or {})[1])
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


def clock_valid():
    return clock.valid()


def _on_config(c):
    """A new config from the cloud: checked like at boot, written atomically, and
    taken at the next restart (the running loop never half-applies a config)."""
    errs = config.validate(c)
    if not errs:
        errs = check_config(c)
    if not errs:
        config.write_json(config.PATH, c, True)  # in pieces: no 5-8 KB string
    return errs


class _CloudIn:
    """Schedules, forecasts and tariffs from the cloud (the link's on_input) to the
    dispatcher, in its time base (_drel), once the wall clock can place them."""

    def __init__(self, disp, err):
        self.disp = disp
        self.err = err

    def input(self, kind, d):
        if not clock_valid():
            if kind != "forecast":
                self.err("%s ignored: wall clock not set yet" % kind)
            return      # (the link keeps it and hands it again once the clock is set)
        if self.disp is None:
            return
        if kind == "schedule":
            self.schedule(d)
        elif kind == "forecast":
            self.disp.set_forecast(_drel(d["t0"]), d["step_s"], d["load_w"], _drel(d["exp"]),
                                   d.get("pv_w"), d.get("aux_w"))
        elif kind == "tariff":
            t = d["tariff"]
            if t is not None:
                t, errs = self.check(t)
                if errs:
                    raise ValueError(errs[0])
            self.disp.set_tariff(t, _drel(d["exp"]))

    def schedule(self, d):
        ws = []
        for w in d.get("windows") or []:
            w = dict(w)
            for k in ("t0", "t1", "exp"):
                if w.get(k) is not None:
                    w[k] = _drel(w[k])
            ws.append(w)
        exp = d.get("exp")
        self.disp.set_schedule(ws, None if exp is None else _drel(exp))

    def check(self, t):
        """A cloud tariff as the site config's would be checked: (normalised, errors)."""
        from edgefw import tariff
        return tariff.validate(t, "tariff", self.disp.export_ok)

    def check_tariff(self, t):
        if self.disp is None:
            return ["tariff: this gateway runs no local dispatch"]
        return [] if t is None else self.check(t)[1]


def _build_link(cfg, disp, err):
    """The cloud link when configured with a host (imported only then: RAM), else
    NO_LINK; its callbacks feed the dispatcher (_CloudIn) and take new configs."""
    lc = cfg.get("link")
    lk = _opt("link") if lc and lc.get("host") else None
    if lk is None:
        return NO_LINK
    try:
        k = lk.Link(lc, cfg["device_id"], ".", cfg["limits"])
        cin = _CloudIn(disp, err)
        k.on_input = cin.input
        k.check_tariff = cin.check_tariff
        k.on_config = _on_config
        w = k.tls_warning()
        if w:
            err("link: %s" % w)  # loud: console, status errors (docs/mqtt.md)
        return k
    except Exception as e:
        err("link: %s" % e)
        return NO_LINK


class _OtaOnOffer:
    """Firmware updates before the first offer: ota.py is imported when an offer comes,
    so a gateway with no update under way spends no RAM on it (about 8 KB on 32-bit with
    the code as .mpy). Until then it says what an idle Ota says."""

    def __init__(self, link, health, buses):
        self.parts = (link, health, buses)
        self.real = None
        link.on_ota = self.offer
        link.on_ota_chunk = self.chunk

    def start(self):
        ot = _opt("ota")
        if ot is None:
            raise ImportError("edgefw.ota")
        self.real = o = ot.Ota(*self.parts)
        link = self.parts[0]
        link.on_ota = o.offer
        link.on_ota_chunk = o.chunk
        return o

    def offer(self, cmd):
        (self.real or self.start()).offer(cmd)

    def chunk(self, payload):
        if self.real is not None:  # no offer yet: a stray chunk is nobody's
            self.real.chunk(payload)

    def poll(self, now):
        if self.real is not None:
            self.real.poll(now)

    def status(self):
        if self.real is not None:
            return self.real.status()
        return {"step": "idle", "running": "base", "version": None}


def _build_ota(link, health, buses):
    """Firmware updates over the link when there is one, else NO_OTA. With an update
    under way or done (the folder otarec.DIR exists: a boot record, a trial, a download
    to resume) ota.py is built at boot; else on the first offer."""
    if link is NO_LINK:
        return NO_OTA
    import os
    o = _OtaOnOffer(link, health, buses)
    try:
        os.stat("ota")
    except OSError:
        return o
    try:
        return o.start()
    except Exception as e:
        health.err("ota: %r" % (e,))
        return NO_OTA


def _build_energy(params, err):
    """The energy counters, restored from ENERGY_FILE (with dispatch parameters and the
    module present), else NO_ENERGY."""
    en = _opt("energy") if params is not None else None
    if en is None:
        return NO_ENERGY
    try:
        e = en.Energy(params)
    except Exception as x:
        err("energy: %s" % x)
        return NO_ENERGY
    try:
        e.load(ENERGY_FILE)  # first boot: no file, the counters start at 0
    except Exception as x:
        err("energy: %s: %r (counters start at 0)" % (ENERGY_FILE, x))
    return e


def _heap():
    gc.collect()
    heap = {}
    if hasattr(gc, "mem_alloc"):  # MicroPython (CPython runs the dual tests)
        heap = {"alloc": gc.mem_alloc(), "free": gc.mem_free()}
    if micropython is not None and hasattr(micropython, "mem_peak"):
        heap["peak"] = micropython.mem_peak()
    return heap


class App:
    def __init__(self, cfg, source="config.json", report=None, open_bus=None):
        self.cfg = cfg
        self.source = source
        self.report = report or []
        self.loops = 0
        self.stopping = False
        self.running = False
        sp, ep = hal.clock_setup()
        clock.configure(sp, ep)
        self.t_boot = clock.site_ms()
        self.health = h = health.Health(cfg)
        self.errors = h.errors  # recent loop errors: [unix s, text] (the list itself)
        err = h.err
        saf = cfg["safety"]
        self.devs = devices.build(cfg)
        # open_bus: tests hand in their own buses
        self.buses = b = buses.Buses(cfg["buses"], saf["stale_polls"],
                                     open_bus or hal.open_bus, err)
        self.masters = b.masters
        self.down = b.down
        b.add(self.devs)
        self.site = Site(self.devs, saf["stale_polls"])
        self.safety = safety.Safety(saf, cfg["limits"].get("pack_trip", "site"))
        ctl = cfg["control"]
        self.period = ctl["period_ms"]
        self.ctl_due = self.t_boot
        self.stat_due = self.t_boot
        pcs = self.site.roles.get("pcs") or ()
        if len(pcs) > 1:  # several PCS share the setpoint (pcsgroup.py)
            from edgefw.pcsgroup import PcsGroup
            self.pcs = PcsGroup(pcs, self.site, b, self.safety, err, h.event,
                                ctl["refresh_ms"], self.period)
        else:
            self.pcs = pcsctl.PcsCtl(self.site.dev("pcs"), b, self.safety, err, h.event,
                                     ctl["refresh_ms"], self.period)
        # PV inverter limit (role pv_inverter): curtail_w applied through pvlimit.py in
        # mode auto; pvlimit is imported only for a site with one (RAM)
        d = self.site.dev("pv_inverter")
        self.pv = pvctl.PvCtl(d, _opt("pvlimit") if d is not None else None,
                              b.master(d.bus) if d is not None else None, self.safety, err)
        self.disp, self.params = self._dispatcher()
        self.ctl = control.Control(cfg, self.site, self.safety, self.disp, self.params,
                                   self.pcs, self.pv, err, self.t_boot)
        self.tel = telemetry.Telemetry(cfg, self.site, self.safety, self.ctl, self.pv, err)
        self.use_link(_build_link(cfg, self.disp, err))
        self.use_energy(_build_energy(self.params, err))
        self.ota = _build_ota(self.link, h, b)
        h.start()  # watchdog, network, config trial

    @property
    def nerr(self):
        return self.health.nerr

    def _dispatcher(self):
        if dispatch is None:
            return None, None
        try:
            p = dispatch.validate_params(self.cfg.get("site") or {})
            d = dispatch.Dispatcher(p)
        except Exception as e:
            self.health.err("dispatch: %s" % e)
            return None, None
        try:
            d.learnt.load(control.LEARNT_FILE)  # first boot: nothing learnt yet
        except Exception as e:
            self.health.err("learnt: %s: %r (profiles start empty)" % (control.LEARNT_FILE, e))
        return d, p

    def use_link(self, lk):
        """The cloud link (NO_LINK: none) for every part that talks to it."""
        self.link = self.health.link = self.ctl.link = self.tel.link = lk

    def use_energy(self, e):
        """The energy counters (NO_ENERGY: none) for control, telemetry and status."""
        self.energy = self.ctl.energy = self.tel.energy = e

    # ---- the pass -------------------------------------------------------------

    def step(self):
        """One pass: buses (each isolated), safety (always), control, PCS writes, link.
        Returns ms it may sleep."""
        h = self.health
        h.pass_err = False
        wait = self.buses.poll(50)
        now = clock.site_ms()
        if self._interlock(now):
            wait = 0
        left = self._control_due(now)
        try:
            self.pcs.service(now)  # un-acknowledged writes go again every bus turn
        except Exception as e:
            h.pass_err = True
            h.err("pcs: %r" % (e,))
        lw = left // clock.speed()
        if lw < wait:
            wait = lw
        if self.link is not NO_LINK:
            try:
                self.link.poll(clock.ticks_ms())
            except Exception as e:
                h.err("link: %s" % e)
            try:
                self.ota.poll(now)
            except Exception as e:
                h.err("ota: %r" % (e,))
            if wait > 20:
                wait = 20
        if self.buses.writes_waiting():
            wait = 0  # a write was queued after its master was polled: send it now
        h.ntp_tick()
        st = self.cfg["status_s"]
        if st and clock.ticks_diff(now, self.stat_due) >= 0:
            self.stat_due = clock.ticks_add(now, st * 1000)
            try:
                self.publish()
            except Exception as e:
                h.err("publish: %r" % (e,))
        self.loops += 1
        h.trial_tick(now, self.buses)
        return wait if wait > 0 else 0

    def _interlock(self, now):
        """The interlock runs every pass: a fault in fresh BMS/PCS data (or data going
        stale) stops the PCS at once, not at the next control tick. True on a new trip."""
        try:
            new = self.safety.check(self.site, now)
        except Exception as e:
            self.health.pass_err = True
            new = self.safety.trip("interlock error %r" % (e,))
        if new:
            self.health.err("safety trip: %s" % self.safety.reason)
            self.ctl.decide(0, control.SRC_SAFETY)
            self.pcs.stop()
        return new

    def _control_due(self, now):
        """A control tick when due (overran: skipped, no burst); the site ms left."""
        left = clock.ticks_diff(self.ctl_due, now)
        if left > 0:
            return left
        self.ctl_due = clock.ticks_add(self.ctl_due, self.period)
        if clock.ticks_diff(now, self.ctl_due) > 0:
            self.ctl_due = clock.ticks_add(now, self.period)
        try:
            self.ctl.tick(now)
        except Exception as e:
            self.health.pass_err = True
            self.health.err("control: %r" % (e,))
        return self.period

    def telemetry(self):
        return self.tel.record()

    def publish(self):
        self.tel.publish()

    def run(self):
        self.running = True
        h = self.health
        try:
            while not self.stopping:
                try:
                    wait = self.step()
                    if h.pass_err:
                        h.err_run += 1
                        h.npass_err += 1
                    else:
                        h.err_run = 0
                except MemoryError:
                    gc.collect()
                    h.nloop_err += 1
                    h.err("MemoryError in the loop")
                    wait = 0
                except Exception as e:
                    h.err_run += 1
                    h.nloop_err += 1
                    h.err("loop: %r" % (e,))
                    wait = 10
                h.feed()
                clock.idle(self.buses.poller, wait)  # poll until due (vgw: lockstep)
        finally:
            self._exit()

    def _exit(self):
        # Ctrl-C, app.stop() or an error out of the loop: nothing supervises the
        # battery after this, so the PCS goes to 0 W and stop first (bounded time)
        err = self.health.err
        try:
            if self.pcs.enabled and self.cfg["control"]["mode"] != "off":
                self.ctl.decide(0, control.SRC_STOPPED)
                self.pcs.shutdown()
        except BaseException as e:  # a second Ctrl-C too: the buses still get closed
            err("pcs stop: %r" % (e,))
        self.running = False
        try:
            self.energy.save(ENERGY_FILE)
        except Exception as e:
            err("energy: save: %r" % (e,))
        try:
            if self.disp is not None and self.ctl.learnt_file:
                self.disp.learnt.save(self.ctl.learnt_file)
        except Exception as e:
            err("learnt: save: %r" % (e,))
        self.buses.close(err)
        clock.idle(None, None)

    def status(self, points=True):
        now = clock.site_ms()
        buses = self.buses.stats()
        heap = _heap()
        c = self.ctl
        pcs = self.pcs
        tr = self.safety.tripped
        h = self.health
        out = {
            "device_id": self.cfg["device_id"], "platform": hal.PLATFORM,
            "t": clock.time(), "uptime_s": clock.ticks_diff(now, self.t_boot) // 1000,
            "speed": clock.speed(), "loops": self.loops, "running": self.running,
            "config": self.source, "config_errors": self.report,
            "config_trial": config.trial_status(),
            "mode": self.cfg["control"]["mode"], "sp_w": c.sp_w, "sp_src": c.sp_src,
            "bound_by": c.bound_by,
            # the import cap the dispatcher holds (raised above site.grid_cap_w until sunset
            # when its plan shows the configured one cannot be held)
            "cap_w": None if self.disp is None else self.disp.cap_w(),
            # sent_w / run_cmd: what the PCS acknowledged (None = unknown: never written
            # or the last write failed); want_*: what the loop asks for
            "sent_w": pcs.ack["p_set_w"], "run_cmd": pcs.ack["run"],
            "want_w": 0 if tr else pcs.want_w, "want_run": 0 if tr else pcs.want_run,
            "pcs_pending": pcs.pending(), "pcs_mismatches": pcs.mismatches,
            # curtail_w: PV the dispatcher wants shed; pv_limit_w: the inverter limit
            # asked for (None = released); pv_lim: (lim_cpct, lim_ena) wanted / acknowledged
            "curtail_w": c.curtail_w, "pv_limit_w": self.pv.limit_w,
            "pv_lim": self.pv.status(),
            "write_fail": pcs.act.wr_fail + self.pv.act.wr_fail,
            "clock_valid": clock_valid(), "time_set": h.time_set,
            "safety": self.safety.status(now), "site": self.site.snapshot(now, points),
            "buses": buses, "link": self.link.stats(),
            "errors": h.errors, "nerr": h.nerr, "heap": heap,
            "energy": self.energy.counters(), "ota": self.ota.status(),
        }
        if hasattr(pcs, "shares"):  # several PCS (pcsgroup.py): each one's share
            out["pcs_split"] = pcs.shares()
        return out


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
