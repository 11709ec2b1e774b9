# The gateway's health: the one error log (status "errors"/"nerr", printed unless the
# REPL console is in use), loop error counts for the watchdog, events to the cloud, the
# config trial (a new config becomes the last good copy only after trial_s of healthy
# running: config.confirm; a reboot before that falls back: config.boot), and the
# network and wall clock (ESP32: WLAN station + NTP; unix: the host's).
from edgefw import clock, config, hal
from edgefw.nulls import NO_LINK

MAXERR = 6              # recent errors kept
WDT_ERR_RUN = 20        # passes in error in a row after which the watchdog is not fed
_NTP_RETRY_MS = 60000   # until the clock is set
_NTP_EVERY_MS = 21600000


class _NoWatchdog:
    def feed(self):
        pass


class Health:
    def __init__(self, cfg):
        self.cfg = cfg
        self.errors = []        # recent loop errors: [unix s, text]
        self.nerr = 0
        self.err_run = 0        # passes in error in a row (the watchdog resets a stuck loop)
        self.pass_err = False   # this pass had an error
        self.nloop_err = 0      # errors of the loop itself (the config trial fails on any)
        self.npass_err = 0      # passes where a part (control, PCS, interlock) raised: a
                                # firmware trial fails on any, a config trial does not
        self.link = NO_LINK
        self.wdt = _NoWatchdog()
        self.net_cfg = cfg.get("net") or {}
        self.time_set = False
        self.ntp_due = clock.ticks_ms()
        self.trial_due = None

    def err(self, text):
        self.nerr += 1
        e = self.errors
        e.append([clock.time(), text])
        if len(e) > MAXERR:
            e.pop(0)
        if not self.cfg.get("console"):
            print("edgegw:", text)

    def event(self, kind, data):
        """An event to the cloud (the link queues it while offline)."""
        try:
            self.link.event(kind, data)
        except Exception as e:
            self.err("link event %s: %r" % (kind, e))

    def start(self):
        """After the parts are built: the watchdog, the network, the config trial."""
        ms = self.cfg["wdt_ms"]
        if ms:
            self.wdt = hal.Watchdog(ms)
        try:
            hal.net_connect(self.net_cfg)  # starts the station; never waits for it
        except Exception as e:
            self.err("net: %r" % (e,))
        if config.on_trial():
            self.trial_due = clock.ticks_add(clock.site_ms(),
                                             self.cfg.get("trial_s", 600) * 1000)
        ts = config.trial_status()
        if ts.get("state") == "failed":
            self.err("config trial failed: %s" % ts.get("why"))
            self.event("config", {"trial": "failed", "why": ts.get("why")})

    def feed(self):
        if self.err_run < WDT_ERR_RUN:
            self.wdt.feed()

    def ntp_tick(self):
        # NTP until the clock is set (every 60 s), then every 6 h; each try is bounded
        # by hal.set_time's own timeout (about 1 s on a board)
        if clock.ticks_diff(clock.ticks_ms(), self.ntp_due) < 0:
            return
        self.ntp_due = clock.ticks_add(clock.ticks_ms(),
                                       _NTP_EVERY_MS if self.time_set else _NTP_RETRY_MS)
        try:
            if hal.net_up(self.net_cfg) and hal.set_time():
                self.time_set = True
        except Exception as e:
            self.err("net/ntp: %r" % (e,))

    def trial_tick(self, now, buses):
        """While on trial: confirm the config once every bus and device is healthy and
        the loop ran without error (looked at every 10 s)."""
        if self.trial_due is None or clock.ticks_diff(now, self.trial_due) < 0:
            return
        if self.nloop_err != 0 or not buses.healthy():
            self.trial_due = clock.ticks_add(now, 10000)  # not healthy yet: look again
            return
        self.trial_due = None
        if config.confirm():
            if not self.cfg.get("console"):
                print("edgegw: config confirmed after its trial")
            self.event("config", {"trial": "confirmed"})
