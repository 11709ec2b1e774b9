"""The device under test, one interface for both targets:

    g.expect(regex, timeout)   console output (after the last match) -> re.Match
    g.exec(code)               run code on the gateway's REPL (mpremote raw REPL) -> stdout
    g.status(points=True)      app.status() as a dict
    g.wait(pred, timeout)      poll status() until pred(status) holds
    g.sim, g.devices, g.buses  the simulated site, its Modbus slaves, the SimBus per line
    g.alive()

SilGateway is the virtual gateway (edgegw.vgw: the unmodified firmware under the unix
micropython, buses on ptys) plus power_cut() (SIGKILL of micropython) and restart() on the
same directory. BoardGateway drives a real board: its REPL port through mpremote's serial
transport, the simulated devices served on the bench's USB-RS485 adapters (--bus NAME=URL).
"""
import json
import os
import signal
import threading
import time

from edgegw.console_io import ReplConsole, replace_code
from edgegw.simdev import SimBus, SimDevice
from edgegw.vgw import VirtualGateway


class DutError(Exception):
    """A bad option or a DUT that cannot start; the message names the option."""


def parse_bus(spec):
    """'bus0=/dev/ttyUSB0' -> ('bus0', '/dev/ttyUSB0'); DutError naming the option."""
    if not isinstance(spec, str) or "=" not in spec:
        raise DutError("--bus %r: expected NAME=URL (e.g. bus0=/dev/ttyUSB0)" % (spec,))
    name, url = spec.split("=", 1)
    if not name or not url:
        raise DutError("--bus %r: expected NAME=URL (both parts non-empty)" % (spec,))
    return name, url


def parse_broker(spec):
    """'HOST[:PORT]' -> (host, port), the port 1883 when missing (edgegw.broker, as every
    command reads it); DutError naming the option."""
    from edgegw.broker import parse_broker as parse
    try:
        return parse(spec, "--broker")
    except ValueError as e:
        raise DutError(str(e))


class SilGateway(VirtualGateway):
    """VirtualGateway with the power-cut and restart hooks the fault matrix needs."""

    target = "sil"

    def power_cut(self):
        """SIGKILL micropython: no atexit, no flush, files as the kernel has them."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self, **kw):
        """A new gateway process on the same directory and simulated site; the files are
        left as the cut left them (write_config=False). Returns the new SilGateway."""
        self.close()
        kw.setdefault("speed", self.speed)
        kw.setdefault("heapsize", self.heapsize)
        kw.setdefault("env", self.extra_env)
        g = SilGateway(self.dir, config=self.cfg, site=self.sim, write_config=False, **kw)
        return g.start()


# ESP32 gateway buses (docs/config.md, hal_esp32 defaults): the tests' configs name unix
# pty paths; on the board bus i becomes BOARD_BUSES[i]
BOARD_BUSES = ({"port": "uart1", "tx": 17, "rx": 16, "de_pin": 4},
               {"port": "uart2", "tx": 25, "rx": 26, "de_pin": 27})


def board_config(cfg):
    """cfg with every bus on the board's UARTs (a port that is not a uart name)."""
    c = json.loads(json.dumps(cfg))
    for i, b in enumerate(c["buses"]):
        if not str(b.get("port", "")).startswith("uart") and i < len(BOARD_BUSES):
            b.update(BOARD_BUSES[i])
    return c


class BoardGateway(ReplConsole):
    """A real gateway on the bench. The firmware is already deployed (`edgegw deploy`);
    start() writes config.json through the REPL, serves the simulated devices on the bus
    adapters and soft-resets the board. The board's site clock runs real time, so the
    simulated physics does too (speed 1)."""

    target = "board"
    console_name = "board"

    def __init__(self, port, buses, config, site, speed=1, baud=115200, ready_timeout=30,
                 fresh=True):
        if not port:
            raise DutError("--port: the gateway's REPL serial port is needed for --target board")
        if not buses:
            raise DutError("--bus: give at least one NAME=URL for --target board (the "
                           "USB-RS485 adapters the simulated devices answer on)")
        if speed != 1:
            raise DutError("--speed %s: a real board's clock runs real time; use --speed 1 "
                           "with --target board" % speed)
        names = [b["name"] for b in config["buses"]]
        self.bus_urls = {}
        for name, url in buses.items():
            if name not in names:
                raise DutError("--bus %s=%s: the config has no bus %r (%s)"
                               % (name, url, name, ", ".join(names)))
            self.bus_urls[name] = url
        self.port = port
        self.baud = baud
        self.cfg = config
        self.config = config
        self.sim = site
        self.speed = 1
        self.ready_timeout = ready_timeout
        self.fresh = fresh          # False: attach to the running gateway as configured
        self.devices = {}
        self.buses = {}
        self._console_init()
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._t = None
        self._ports = []
        self._clock = None

    # ---- lifecycle ----------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.close()

    def start(self):
        import serial
        from mpremote.transport_serial import SerialTransport
        for b in self.cfg["buses"]:
            url = self.bus_urls.get(b["name"])
            if url is None:
                continue
            try:
                ser = serial.serial_for_url(url, baudrate=b.get("baud", 9600),
                                            parity=b.get("parity", "N"),
                                            stopbits=b.get("stop", 1), timeout=0)
            except (serial.SerialException, ValueError) as e:
                raise DutError("--bus %s=%s: %s" % (b["name"], url, e))
            self._ports.append(ser)
            devs = []
            for d in self.cfg["devices"]:
                if d.get("bus") == b["name"]:
                    sd = SimDevice(d["map"], d["slave"], d["role"], site=self.sim, name=d["name"])
                    self.devices[d["name"]] = sd
                    devs.append(sd)
            self.buses[b["name"]] = SimBus(ser, devs, b.get("baud", 9600), False,
                                           b["name"]).start()
        self._clock = self.sim.start_clock(1)
        try:
            self.t = SerialTransport(self.port, baudrate=self.baud)
        except Exception as e:
            raise DutError("--port %s: cannot open it (%s)" % (self.port, e))
        self._t = threading.Thread(target=self._reader, name="board-console", daemon=True)
        self._t.start()
        if self.fresh:
            self.write_file("config.json", _dumps_config(board_config(self.cfg)))
            self.reset()
        return self

    def reset(self):
        """Soft reset (Ctrl-D at the friendly REPL): boot.py and main.py run again."""
        with self._io:
            s = self.t.serial
            s.write(b"\r\x03\x03")
            time.sleep(0.2)
            s.write(b"\x04")
        self.expect(r"edgegw: config from", self.ready_timeout)

    def close(self):
        self._stop.set()
        if self._t is not None:
            self._t.join(2)
        try:
            self.t.close()
        except OSError:      # the board went away: nothing left to close
            pass
        for b in self.buses.values():
            b.stop()
        for p in self._ports:
            try:
                p.close()
            except OSError:
                pass
        if self._clock is not None:
            self._clock.set()

    def alive(self):
        try:
            self.exec("print(1)", timeout=5)
            return True
        except Exception:
            return False

    def power_cut(self):
        raise NotImplementedError("a power cut needs a switched supply on the bench")

    def run_to(self, site_t, timeout=60):
        """A board's clock runs real time and cannot be held (the virtual gateway's
        run_to holds its site): wait until the site reaches site_t."""
        end = time.monotonic() + timeout + max(0.0, site_t - self.sim.t)
        while self.sim.t < site_t:
            if time.monotonic() > end:
                raise TimeoutError("site time %.1f not reached" % site_t)
            time.sleep(0.05)
        return self.sim.t

    def resume(self):
        pass

    # ---- console --------------------------------------------------------------------

    def _reader(self):
        while not self._stop.is_set():
            d = b""
            with self._io:
                try:
                    n = self.t.serial.in_waiting
                    if n:
                        d = self.t.serial.read(n)
                except Exception:
                    d = b""
            if not d:
                time.sleep(0.02)
                continue
            self._console_got(d)

    def exec(self, code, timeout=10):
        """Run code in the board's raw REPL on the open port -> stdout."""
        with self._io:
            return self._console_exec(self.t, code, timeout)

    def write_file(self, path, text):
        data = text.encode() if isinstance(text, str) else text
        tmp = path + ".tmp"
        self.exec("_f=open(%r,'wb')" % tmp)
        for i in range(0, len(data), 512):
            self.exec("_f.write(%r)" % data[i:i + 512])
        self.exec("_f.close()\n" + replace_code(tmp, path) + "del _f")


def _dumps_config(cfg):
    import sys
    from edgegw.vgw import FIRMWARE
    if FIRMWARE not in sys.path:
        sys.path.insert(0, FIRMWARE)
    from edgefw import config
    return config.dumps(cfg)


def sil_config(cfg, baud=None):
    """A copy of cfg for the virtual gateway: with `baud` every bus runs at that rate (a
    pty has no baud; the bus master's t3.5 silence and timeouts follow it, so a fast rate
    keeps a whole poll cycle short against a sped-up site clock)."""
    c = json.loads(json.dumps(cfg))
    if baud:
        for b in c["buses"]:
            b["baud"] = baud
    return c
