# ESP32 hardware layer: machine.UART per RS-485 bus with the transceiver's driver-enable
# (DE/RE) pin raised only while sending, machine.WDT, littlefs mounted at "/" by the
# MicroPython boot, WLAN station. Compiles with mpy-cross; it cannot run off the board.
import machine

PLATFORM = "esp32"

# factory-default buses: UART1/UART2 on the usual RS-485 board wiring
DEFAULT_BUSES = (
    {"name": "bus0", "port": "uart1", "baud": 9600, "tx": 17, "rx": 16, "de_pin": 4},
    {"name": "bus1", "port": "uart2", "baud": 19200, "tx": 25, "rx": 26, "de_pin": 27},
)
# production: the loop owns the CPU and the watchdog; Ctrl-C on the USB REPL stops it
CONSOLE = False

_PARITY = {"N": None, "E": 0, "O": 1}


class Bus:
    def __init__(self, cfg):
        port = cfg["port"]
        uid = int(port[4:]) if isinstance(port, str) and port.startswith("uart") else int(port)
        kw = {"baudrate": cfg.get("baud", 9600), "bits": 8,
              "parity": _PARITY[cfg.get("parity", "N")], "stop": cfg.get("stop", 1),
              "timeout": 0, "timeout_char": 0, "rxbuf": 512}
        if cfg.get("tx") is not None:
            kw["tx"] = cfg["tx"]
        if cfg.get("rx") is not None:
            kw["rx"] = cfg["rx"]
        self.port = port
        self.uart = machine.UART(uid, **kw)
        self.stream = self.uart
        de = cfg.get("de_pin")
        self.de = None
        if de is not None:
            self.de = machine.Pin(de, machine.Pin.OUT, value=0)

    def write(self, buf):
        de = self.de
        if de is not None:
            de.value(1)
        n = self.uart.write(buf)
        # hold the driver until the last stop bit left, then release the line at once
        self.uart.flush()
        if de is not None:
            de.value(0)
        return n

    def readinto(self, buf):
        n = self.uart.readinto(buf)
        return 0 if n is None else n

    def close(self):
        try:
            self.uart.deinit()
        except OSError:      # deinit of a UART the driver already dropped
            pass


def open_bus(cfg):
    return Bus(cfg)


class Watchdog:
    def __init__(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self.wdt.feed()


def net_connect(net_cfg):
    """Start the WLAN station from the config's `net` section ({"ssid", "psk"}); never
    waits for the association (the control loop must run without a network)."""
    if not net_cfg or not net_cfg.get("ssid"):
        return False
    import network
    w = network.WLAN(network.STA_IF)
    w.active(True)
    if not w.isconnected():
        try:
            w.connect(net_cfg["ssid"], net_cfg.get("psk", ""))
        except OSError:
            pass  # already connecting
    return w.isconnected()


def net_up(net_cfg=None):
    """True when the station has an address; starts it again if it dropped."""
    import network
    w = network.WLAN(network.STA_IF)
    if w.isconnected():
        return True
    if net_cfg:
        net_connect(net_cfg)
    return False


def set_time():
    """RTC from NTP (UTC); one bounded attempt (1 s socket timeout). True when set."""
    try:
        import ntptime
    except ImportError:
        return False
    ntptime.timeout = 1
    try:
        ntptime.settime()
    except Exception:
        return False
    return True


def reset():
    machine.reset()


def clock_setup():
    return 1, None  # real time; the RTC is set by NTP (app -> set_time) once WLAN is up
