# Unix hardware layer (virtual gateway, or a PC with USB RS-485 adaptors): each bus is
# a real OS byte stream - a tty/pty path, or "tcp:HOST:PORT" - read without blocking.
# The filesystem is the current directory (the virtual gateway's directory).
import sys

from edgefw import clock

try:
    import termios
except ImportError:  # CPython without termios (not Linux): tcp buses only
    termios = None

PLATFORM = "unix"

# factory-default buses: pty/serial paths inside the gateway's directory
DEFAULT_BUSES = (
    {"name": "bus0", "port": "dev/bus0", "baud": 9600},
    {"name": "bus1", "port": "dev/bus1", "baud": 19200},
)
# the control loop runs in a thread so the REPL stays usable (config "console" default)
CONSOLE = True

# Linux c_cflag bits and c_cc indices (MicroPython's termios lacks the names)
_PARENB = 0o400
_PARODD = 0o1000
_CSTOPB = 0o100
_VTIME = 5
_VMIN = 6


def _speed_const(baud):
    if termios is None:
        return None
    return getattr(termios, "B%d" % baud, None)


class Bus:
    """A bus on a tty/pty path or a TCP stream; readinto never blocks."""

    def __init__(self, port, baud=9600, parity="N", stop=1):
        self.port = port
        self.sock = None
        if port.startswith("tcp:"):
            import socket
            hp = port[4:].rsplit(":", 1)
            s = socket.socket()
            ai = socket.getaddrinfo(hp[0], int(hp[1]))[0][-1]
            s.connect(ai)
            s.setblocking(False)
            self.sock = s
            self.stream = s
        else:
            f = open(port, "r+b", buffering=0)
            self.stream = f
            if termios is not None:
                fd = f.fileno()
                termios.setraw(fd)
                a = termios.tcgetattr(fd)
                cf = a[2] & ~(_PARENB | _PARODD | _CSTOPB)
                if parity == "E":
                    cf |= _PARENB
                elif parity == "O":
                    cf |= _PARENB | _PARODD
                if stop == 2:
                    cf |= _CSTOPB
                a[2] = cf
                sp = _speed_const(baud)
                if sp is not None:
                    a[4] = sp
                    a[5] = sp
                # VMIN=0, VTIME=0: a read returns what is there (maybe nothing) at once
                cc = a[6]
                cc[_VMIN] = 0 if isinstance(cc[_VMIN], int) else b"\x00"
                cc[_VTIME] = 0 if isinstance(cc[_VTIME], int) else b"\x00"
                termios.tcsetattr(fd, termios.TCSANOW, a)

    def write(self, buf):
        if self.sock is None:
            n = self.stream.write(buf)
            if _ls is not None and n:
                _ls.sent(self.port, n)
            return n
        # non-blocking socket: a short frame fits the send buffer; loop to be sure
        mv = memoryview(buf)
        done = 0
        while done < len(buf):
            try:
                n = self.sock.send(mv[done:])
            except OSError as e:
                if e.args[0] != 11:  # EAGAIN
                    raise
                n = 0
            if n:
                done += n
        return done

    def readinto(self, buf):
        try:
            if self.sock is not None and hasattr(self.sock, "recv_into"):
                n = self.sock.recv_into(buf)  # CPython sockets have no readinto
            else:
                n = self.stream.readinto(buf)
        except OSError as e:
            if e.args[0] == 11:  # EAGAIN on a non-blocking socket
                return 0
            raise
        if n is None:
            return 0
        if n == 0 and self.sock is not None:
            raise OSError(104, "bus %s closed by peer" % self.port)  # ECONNRESET
        return n

    def close(self):
        try:
            self.stream.close()
        except OSError:      # already closed by the peer: nothing left to release
            pass


def open_bus(cfg):
    return Bus(cfg["port"], cfg.get("baud", 9600), cfg.get("parity", "N"), cfg.get("stop", 1))


class Watchdog:
    """No hardware watchdog on unix; the virtual gateway's host watches the process."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.fed = 0

    def feed(self):
        self.fed += 1


def net_connect(net_cfg):
    return True  # the host's network is already up


def net_up(net_cfg=None):
    return True


def set_time():
    """The host keeps its own clock (NTP is the OS's job): nothing to set."""
    return True


def reset():
    # sys.exit in the loop's thread (config "console") would end only that thread, and
    # under `micropython -i` only drop to the REPL: the virtual gateway takes SIGUSR1 to
    # the process as the same reset
    import os
    os.system("kill -USR1 $PPID")
    sys.exit(3)


def clock_setup():
    """(speed, epoch) for clock.configure: the virtual gateway runs the site clock
    faster than real time (EDGEGW_SPEED) from a chosen start (EDGEGW_EPOCH, unix s), in
    lockstep with its simulated site when it names the channel (EDGEGW_LOCKSTEP)."""
    import os
    global _ls
    sp = os.getenv("EDGEGW_SPEED")
    ep = os.getenv("EDGEGW_EPOCH")
    path = os.getenv("EDGEGW_LOCKSTEP")
    if path and _ls is None:
        _ls = _Lockstep(path)
        clock.lockstep(_ls.ticks_ms, _ls.ticks_us, _ls.step)
    return (int(sp) if sp else 1), (int(ep) if ep else None)


_ls = None


class _Lockstep:
    """Time owned by the virtual gateway's host, over two FIFOs (PATH.req, PATH.grant).
    After each pass the loop writes "w MS PORT=N ...": it may wait MS (virtual real) ms
    and wrote N bytes on PORT since its last report; the host reads those bytes, answers
    what is due, advances the site and replies with the new time (us). "d": the loop has
    ended (the site's time runs free); "h": a new process. A busy host only slows it."""

    def __init__(self, path):
        import _thread
        self.lock = _thread.allocate_lock()
        self.req = open(path + ".req", "wb")
        self.grant = open(path + ".grant", "rb")
        self.us = 0
        self.tx = {}
        self._talk("h")

    def ticks_ms(self):
        return clock.ticks_add(0, self.us // 1000)

    def ticks_us(self):
        return clock.ticks_add(0, self.us)

    def sent(self, port, n):
        self.tx[port] = self.tx.get(port, 0) + n

    def step(self, ms):
        if ms is None:
            with self.lock:
                self.req.write(b"d\n")
            return
        tx = self.tx
        self.tx = {}
        msg = "w %d" % ms
        for p in tx:
            msg += " %s=%d" % (p, tx[p])
        self._talk(msg)

    def _talk(self, msg):
        with self.lock:
            self.req.write(msg.encode() + b"\n")
            ln = self.grant.readline()
        if ln:
            self.us = int(ln)
