"""Virtual gateway: the unmodified firmware under the unix `micropython`, its filesystem
in a directory, each RS-485 bus a pty with simulated devices on the host side, the site
clock running `speed` x real time in lockstep with the firmware (edgegw.lockstep: a busy
host runs it slower, never differently), and its REPL on a pty that mpremote can use. A
soft reset (Ctrl-D at the REPL, machine.soft_reset(), hal.reset()) boots it again.

    from edgegw.vgw import VirtualGateway
    from edgegw.simsite import SimSite

    with VirtualGateway(dirpath, config=cfg, site=SimSite(...), speed=10) as gw:
        gw.repl_port            # pty path: `mpremote connect <it> resume exec ...`
        gw.bus_ports            # {bus name: pty path the firmware opened}
        gw.external_ports       # {bus name: pty path for an outside peer}, for the buses
                                # named in external=(...): no simulated devices there
        gw.sim                  # the SimSite (physics; fault hooks bms_alarm, pcs_fault)
        gw.devices              # {device name: SimDevice} (mode = "silent"/"crc"/...)
        gw.buses                # {bus name: SimBus} (trace of frames on each line)
        gw.expect(r"regex", timeout=10)   # wait for console output -> re.Match
        gw.exec("print(1)")     # run code on the gateway's REPL (mpremote API) -> str
        gw.status()             # app.status() as a dict
        gw.wait(lambda s: ..., timeout)   # poll status() until the predicate holds
        gw.run_to(site_t); gw.resume()    # hold the site at one exact instant (lockstep)

config: a gateway config dict (written as config.json with every bus port replaced by
the path dev/<bus name>, a symlink to that bus's pty). None = the firmware's factory
default (no config.json written; it already uses dev/bus0 and dev/bus1). With
write_config=False the directory's files are left as they are (tests of bad files) and
`config` only says which devices to simulate.

How the REPL works: micropython's stdin/stdout is a pty slave (raw mode); a relay
thread copies between its master and a second pty whose slave is `repl_port` (and keeps
a copy of the output for expect()). main.py starts the control loop in a _thread (config
"console": true, the unix default), so the REPL stays usable while control runs; the
same happens on an ESP32 given "console": true. Nobody listening on repl_port: output is
dropped, as on an unplugged serial port.
"""
import json
import os
import pty
import select
import signal
import subprocess
import tempfile
import termios
import threading
import time
import tty

from edgegw.console_io import ReplConsole
from edgegw.simdev import SimBus, SimDevice
from edgegw.simsite import SimSite

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRMWARE = os.path.join(REPO, "firmware")
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")


def _default_config():
    import sys
    for p in (FIRMWARE, REPO):
        if p not in sys.path:
            sys.path.insert(0, p)
    from edgefw import config
    c = config.default()
    config.validate(c)
    return c


def site_config(period_ms=1000, timeout_ms=50, **sections):
    """The typical two-bus site as a config dict (PCS and three SDM630 meters on bus0 at
    9600, the Seplos BMS on bus1 at 19200); keyword arguments replace whole sections
    (control={...}, safety={...}, site={...}, link={...}, ...)."""
    c = _default_config()
    for b in c["buses"]:
        b["timeout_ms"] = timeout_ms
    for d in c["devices"]:
        d["period_ms"] = period_ms
    c["status_s"] = 0
    c.update(sections)
    return c


def _pty_raw():
    m, s = pty.openpty()
    tty.setraw(s)
    return m, s, os.ttyname(s)


# The virtual gateway's heap. It is not the board's figure: this is the 64-bit unix port
# (objects and bytecode 1.3-2x the 32-bit size) compiling every module from source at boot,
# where the board runs frozen bytecode from flash. Resident after boot was ~190 KiB here
# and the source compile's peak needs ~380 KiB (384k tipped into MemoryError as modules
# grew). The board's figures are measured on 32-bit by `make bench` (mem: data <= 32 KiB,
# no allocation above 2 KiB).
DEFAULT_HEAP = "512k"
# micropython ended as a board reset: exit(0) (soft reset), exit(3) (hal.reset), SIGUSR1
# (hal.reset from the loop's thread, where sys.exit would end only the thread)
_RESET_RC = (0, 3, -signal.SIGUSR1)


class VirtualGateway(ReplConsole):
    def __init__(self, dirpath=None, config=None, site=None, speed=10, heapsize=DEFAULT_HEAP,
                 write_config=True, pace=False, micropython=MICROPYTHON, env=None,
                 ready_timeout=15, external=(), lockstep=None):
        self.external = tuple(external)  # bus names served from outside (replayer, adapter)
        # lockstep (edgegw.lockstep): site time moves only when the firmware and the
        # simulated devices have done their step. Real time instead for a line paced at
        # its baud rate (what the bench measures) and for outside peers on a bus
        self.lockstep = (not pace and not self.external) if lockstep is None else lockstep
        self.clock = None
        self.external_ports = {}
        self.dir = os.path.abspath(dirpath or tempfile.mkdtemp(prefix="edgegw-vgw-"))
        self.config = config
        self.sim = site if site is not None else SimSite()
        self.speed = int(speed)
        self.heapsize = heapsize
        self.write_config = write_config
        self.pace = pace
        self.micropython = micropython
        self.extra_env = env or {}
        self.ready_timeout = ready_timeout
        self.devices = {}
        self.buses = {}
        self.bus_ports = {}
        self.repl_port = None
        self.proc = None
        self._console_init()
        self._exec_lock = threading.Lock()
        self._stop = threading.Event()
        self._fds = []
        self._threads = []
        self.resets = 0         # soft resets the gateway went through

    # ---- lifecycle ----------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        os.makedirs(os.path.join(self.dir, "dev"), exist_ok=True)
        cfg = self.config if self.config is not None else _default_config()
        cfg = json.loads(json.dumps(cfg))  # our copy
        for b in cfg["buses"]:
            b.setdefault("name", "bus%d" % cfg["buses"].index(b))
        for b in cfg["buses"]:
            m, s, path = _pty_raw()
            self._fds += [m, s]
            link = os.path.join(self.dir, "dev", b["name"])
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(path, link)
            self.bus_ports[b["name"]] = path
            b["port"] = "dev/" + b["name"]
            if b["name"] in self.external:
                # the outside world (edgegw replay, a USB adapter bridge) opens a second
                # pty; a relay joins the two lines as one RS-485 segment
                m2, s2, path2 = _pty_raw()
                self._fds += [m2, s2]
                self.external_ports[b["name"]] = path2
                th = threading.Thread(target=self._bridge, args=(m, m2), daemon=True,
                                      name="bus-bridge-" + b["name"])
                th.start()
                self._threads.append(th)
                continue
            devs = []
            for i, d in enumerate(cfg.get("devices") or []):
                if d.get("bus", cfg["buses"][0]["name"]) != b["name"]:
                    continue
                name = d.get("name") or d.get("role")
                sd = SimDevice(d["map"], d["slave"], d["role"], site=self.sim, name=name)
                self.devices[name] = sd
                devs.append(sd)
            bus = SimBus(m, devs, b.get("baud", 9600), self.pace, b["name"], peer=s)
            self.buses[b["name"]] = bus if self.lockstep else bus.start()
        if self.config is not None and self.write_config:
            with open(os.path.join(self.dir, "config.json"), "w") as f:
                json.dump(cfg, f, indent=1)
        self.cfg = cfg
        self._start_site()
        self._start_micropython()
        return self

    def _start_site(self):
        if self.lockstep:
            from edgegw.lockstep import Lockstep
            ports = {"dev/" + n: b for n, b in self.buses.items()}
            self.clock = Lockstep(self.sim, self.speed, ports,
                                  os.path.join(self.dir, "dev", "clock"), self.alive,
                                  boot_s=self.ready_timeout).start()
            return

        def run():
            last = time.monotonic()
            while not self._stop.is_set():
                time.sleep(0.01)
                now = time.monotonic()
                self.sim.step((now - last) * self.speed)
                last = now
        th = threading.Thread(target=run, name="simsite", daemon=True)
        th.start()
        self._threads.append(th)

    def _start_micropython(self):
        m1, s1, _ = _pty_raw()      # micropython's console
        m2, s2, path2 = _pty_raw()  # what the user (mpremote) opens
        self._fds += [m1, s1, m2, s2]
        self.repl_port = path2
        self._s1 = s1
        self._spawn()
        os.set_blocking(m2, False)
        th = threading.Thread(target=self._relay, args=(m1, m2), name="repl-relay", daemon=True)
        th.start()
        self._threads.append(th)
        if self.clock is not None:
            self.clock.hold_more(1)  # site time stands still while it boots: a fixed start
        try:
            self.expect(r">>> ", self.ready_timeout)
        except TimeoutError:
            self.close()
            raise RuntimeError("virtual gateway did not reach its REPL:\n" + self.output[-3000:])
        if self.clock is not None:
            # the passes it can make at its first instant (one transaction a bus) are done
            self.clock.settle()
            self.clock.hold_more(-1)

    def _spawn(self):
        """Start micropython on the console pty: boot.py, then main.py, then the REPL."""
        env = dict(os.environ)
        env.update({"MICROPYPATH": ".frozen:%s:%s" % (REPO, FIRMWARE),
                    "EDGEGW_SPEED": str(self.speed), "EDGEGW_EPOCH": str(int(self.sim.t))})
        if self.clock is not None:
            env["EDGEGW_LOCKSTEP"] = self.clock.path
        env.update(self.extra_env)
        launch = "exec(open(%r).read());exec(open(%r).read())" % (
            os.path.join(FIRMWARE, "boot.py"), os.path.join(FIRMWARE, "main.py"))
        s1 = self._s1
        self.proc = subprocess.Popen(
            [self.micropython, "-X", "heapsize=%s" % self.heapsize, "-i", "-c", launch],
            stdin=s1, stdout=s1, stderr=s1, cwd=self.dir, env=env, start_new_session=True)

    def _soft_reset(self, m2):
        """micropython ended by itself (Ctrl-D at the REPL, machine.soft_reset(), exit
        code 0; hal.reset(), 3 or SIGUSR1): a board would boot again from its filesystem with its
        buses and console still there, so start it again on the same ptys."""
        self.resets += 1
        msg = b"MPY: soft reboot\r\n"
        self._console_got(msg)
        try:
            os.write(m2, msg)
        except OSError:
            pass
        if self.clock is not None:
            self.clock.reboot()
        try:
            termios.tcflush(self._s1, termios.TCIFLUSH)  # typed while it was down: lost
        except termios.error:
            pass
        self._spawn()

    def _bridge(self, a, b):
        """Copy bytes both ways between two pty masters (an external bus)."""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([a, b], [], [], 0.2)
            except (OSError, ValueError):
                return
            for src, dst in ((a, b), (b, a)):
                if src in r:
                    try:
                        d = os.read(src, 4096)
                        if d:
                            os.write(dst, d)
                    except OSError:
                        pass

    def _relay(self, m1, m2):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([m1, m2], [], [], 0.2)
            except (OSError, ValueError):
                return
            rc = self.proc.poll()
            if rc in _RESET_RC and m1 not in r and not self._stop.is_set():
                self._soft_reset(m2)
                continue
            if m1 in r:
                try:
                    d = os.read(m1, 4096)
                except OSError:
                    d = b""
                if not d:
                    if self.proc.poll() not in (None,) + _RESET_RC:
                        return
                    time.sleep(0.05)
                    continue
                self._console_got(d)
                try:
                    os.write(m2, d)
                except (BlockingIOError, OSError):
                    pass  # nobody reads the REPL port: drop, like an unplugged UART
            if m2 in r:
                try:
                    d = os.read(m2, 4096)
                except (BlockingIOError, OSError):
                    d = b""
                if d:
                    os.write(m1, d)

    def close(self):
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(3)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        if self.clock is not None:
            self.clock.close()
        for b in self.buses.values():
            b.stop()
        for th in self._threads:
            th.join(1)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def hold(self):
        """Context manager: site time stands still inside it while the firmware keeps
        running (lockstep; without it the site cannot be held and this does nothing)."""
        if self.clock is not None:
            return self.clock.hold()
        import contextlib
        return contextlib.nullcontext()

    def run_to(self, site_t, timeout=60):
        """Lockstep: run the site until exactly site time site_t and hold it there (the
        firmware keeps running) until resume(); returns the site time held. Reads made
        while held see one exact instant whatever the host's speed."""
        if self.clock is None:
            raise RuntimeError("run_to needs the lockstep clock (no pace, no external bus)")
        return self.clock.run_to(site_t, timeout)

    def resume(self):
        if self.clock is not None:
            self.clock.resume()

    def site_sleep(self, site_s, timeout=30):
        """Wait until the site has run site_s seconds; TimeoutError when its time stood
        still for `timeout` real s (a slow host only takes longer)."""
        t_end = self.sim.t + site_s
        last, moved = self.sim.t, time.monotonic()
        while self.sim.t < t_end:
            if self.sim.t != last:
                last, moved = self.sim.t, time.monotonic()
            elif time.monotonic() - moved > timeout:
                raise TimeoutError("site time stood still %d s (%.1f s short)"
                                   % (timeout, t_end - self.sim.t))
            time.sleep(0.02)

    # ---- console ------------------------------------------------------------
    # expect(), status(), wait(): ReplConsole; output comes from _relay

    def exec(self, code, timeout=10):
        """Run code on the gateway's REPL through mpremote's serial transport -> stdout."""
        from mpremote.transport_serial import SerialTransport
        with self._exec_lock:
            t = SerialTransport(self.repl_port, baudrate=115200)
            try:
                return self._console_exec(t, code, timeout)
            finally:
                t.close()
