"""The console side a gateway object shares with any other that talks to a MicroPython
REPL (the virtual gateway's pty, a board's serial port): the output a reader thread
collects, expect() on it, exec() in the raw REPL through an mpremote transport, and
status()/wait() on top of exec().

A class using ReplConsole calls _console_init() in its __init__, hands every chunk its
reader gets to _console_got(), and runs code with _console_exec(transport, ...)."""
import json
import re
import threading
import time

OUTPUT_MAX = 1000000    # keep memory bounded on long runs: past this, keep the last
OUTPUT_KEEP = 500000    # OUTPUT_KEEP characters


def replace_code(tmp, path):
    """Board-side code that renames tmp over path: the atomic step of every write the host
    makes on a gateway's filesystem, as edgefw.store.replace does it (written out: a board
    being deployed may run firmware from before store.py)."""
    return ("import os\ntry:\n os.rename(%r,%r)\nexcept OSError:\n try:\n  os.remove(%r)\n"
            " except OSError:\n  pass\n os.rename(%r,%r)\n" % (tmp, path, path, tmp, path))


class ReplConsole:
    console_name = "gateway"    # expect()'s timeout message: "no ... in the <it> output"

    def _console_init(self):
        self.output = ""
        self._pos = 0           # where the next expect() starts searching
        self._out_lock = threading.Condition()

    def _console_got(self, data):
        """Append console bytes to output and wake expect()."""
        with self._out_lock:
            self.output += data.decode("utf-8", "replace")
            if len(self.output) > OUTPUT_MAX:
                cut = len(self.output) - OUTPUT_KEEP
                self.output = self.output[cut:]
                self._pos = max(0, self._pos - cut)
            self._out_lock.notify_all()

    def expect(self, regex, timeout=10):
        """Wait until the console output (after the last match) matches regex."""
        rx = re.compile(regex)
        end = time.monotonic() + timeout
        with self._out_lock:
            while True:
                m = rx.search(self.output, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %r in the %s output within %s s; tail:\n%s"
                                       % (regex, self.console_name, timeout,
                                          self.output[-1500:]))
                self._out_lock.wait(min(left, 0.2))

    def _console_exec(self, t, code, timeout):
        """Run code in the raw REPL of mpremote transport t -> its stdout; the REPL is
        left friendly again, also when the run fails. TransportExecError on a traceback."""
        from mpremote.transport import TransportExecError
        t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        try:
            out, err = t.exec_raw(code, timeout=timeout)
        finally:
            t.exit_raw_repl()
        if err:
            raise TransportExecError(out, err.decode())
        return out.decode("utf-8", "replace")

    def status(self, points=True, timeout=10):
        """app.status() on the gateway as a dict."""
        # print_status writes the JSON in pieces (no 5 KB string on a fragmented heap);
        # firmware from before it has only status()
        out = self.exec("_p = %s\nfrom edgefw import app as _a\ntry:\n    _a.print_status(_p)\n"
                        "except AttributeError:\n    import json\n"
                        "    print(json.dumps(_a.status(_p)))" % bool(points), timeout)
        return json.loads(out.strip().splitlines()[-1])

    def wait(self, pred, timeout=20, interval=0.3, points=True):
        """Poll status() until pred(status) is true; returns that status."""
        end = time.monotonic() + timeout
        while True:
            s = self.status(points)
            if pred(s):
                return s
            if time.monotonic() > end:
                raise TimeoutError("status condition not met in %s s; last status:\n%s"
                                   % (timeout, json.dumps(s, indent=1)[:4000]))
            time.sleep(interval)


# ---- talking to a device's REPL from the toolkit, always with a deadline ------------------

READ_S = 5.0       # longest single serial read: mpremote's own timeouts can then fire (on a
                   # pty it blocks in read(1), which without a port timeout never returns)
NO_ANSWER = ("check that the gateway is running, that the port is its REPL (not a bus), "
             "the baud rate, and that no other program (a console) holds the port")


class Interrupted(Exception):
    """Ctrl-C arrived; raised between two whole REPL exchanges (see Device.stop_requested)."""


class Device:
    """A MicroPython REPL reached through any pyserial URL, in raw REPL mode without a soft
    reset (the firmware is interrupted with Ctrl-C, as `mpremote resume` does). Every
    exchange is bounded by `timeout` seconds of silence; a device that does not answer is a
    UserError naming the port and what to check. The one helper the commands (deploy,
    config, status, console) use to talk to a gateway's REPL."""

    def __init__(self, port, baud=115200, timeout=10):
        from edgegw.cli import UserError
        try:
            from mpremote.transport_serial import SerialTransport
            from mpremote.transport import TransportError
        except ImportError as e:  # pragma: no cover - mpremote is a dependency
            raise UserError("mpremote is not installed (%s): pip install mpremote" % e)
        self.port = port
        self.timeout = timeout
        self.stop_requested = False     # set by deferred_sigint(); checked between exchanges
        self.lost = False               # an exchange broke off: the REPL state is unknown
        try:
            with _quiet():
                self.t = SerialTransport(port, baudrate=baud, timeout=READ_S)
        except TransportError:
            raise UserError("--port %s: cannot open it: check the path and that no other "
                            "program (a console) holds the port" % port)
        except Exception as e:
            raise UserError("--port %s: cannot open it (%s)" % (port, _one_line(e)))
        try:
            with _quiet():
                self.t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        except BaseException as e:
            self.close()
            if isinstance(e, KeyboardInterrupt):
                raise
            raise UserError("--port %s: no MicroPython REPL answered within %g s: %s"
                            % (port, timeout, NO_ANSWER))

    def exec(self, code):
        """Run code on the device; its output as text. A device exception -> UserError."""
        from edgegw.cli import UserError
        if self.lost:
            raise UserError("--port %s: the REPL exchange broke off earlier: %s"
                            % (self.port, NO_ANSWER))
        try:
            with _quiet():
                out, err = self.t.exec_raw(code, timeout=self.timeout)
        except KeyboardInterrupt:
            self.lost = True        # cut mid-exchange: nothing more goes through it
            raise
        except Exception as e:
            self.lost = True
            raise UserError("--port %s: the REPL stopped answering (%s): %s"
                            % (self.port, _one_line(e), NO_ANSWER))
        if err:
            last = err.decode("utf-8", "replace").strip().splitlines()
            raise UserError("on the device: %s" % (last[-1] if last else "error"))
        return out.decode("utf-8", "replace")

    def check_stop(self):
        if self.stop_requested:
            raise Interrupted()

    def read(self, path):
        """File contents (bytes) or None when it does not exist."""
        import binascii
        code = ("import binascii\ntry:\n f=open(%r,'rb')\nexcept OSError:\n print('-')\nelse:\n"
                " while True:\n  b=f.read(%d)\n  if not b: break\n"
                "  print(binascii.b2a_base64(b).decode().strip())\n f.close()\n"
                " print('.')\n" % (path, CHUNK))
        out = self.exec(code).split()
        if not out or out[0] == "-":
            return None
        return b"".join(binascii.a2b_base64(x) for x in out if x != ".")

    def write(self, path, data, progress=None):
        """Write path atomically: temp file, then rename over the old one. Ctrl-C under
        deferred_sigint() stops between chunks: the temp file is dropped, path is untouched
        (Interrupted is raised)."""
        import binascii
        tmp = path + ".tmp"
        self.exec("import binascii, os\n_f=open(%r,'wb')" % tmp)
        try:
            for i in range(0, len(data), CHUNK):
                self.check_stop()
                b = binascii.b2a_base64(data[i:i + CHUNK]).decode().strip()
                self.exec("_f.write(binascii.a2b_base64(%r))" % b)
                if progress:
                    progress(min(CHUNK, len(data) - i))
            self.check_stop()
        except Interrupted:
            self.exec("_f.close()\ntry:\n os.remove(%r)\nexcept OSError:\n pass\ndel _f" % tmp)
            raise
        self.exec("_f.close()\n" + replace_code(tmp, path) + "del _f")

    def remove(self, path):
        self.exec("import os\ntry:\n os.remove(%r)\nexcept OSError:\n pass" % path)

    def rmdirs(self, dirs):
        """Remove the directories that are empty, deepest first (others stay)."""
        code = "import os\nfor d in %r:\n try:\n  os.rmdir(d)\n except OSError:\n  pass" % (
            sorted(dirs, key=lambda d: -d.count("/")),)
        self.exec(code)

    def makedirs(self, dirs):
        code = "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass" % (
            sorted(dirs),)
        self.exec(code)

    def sizes(self, paths):
        """{path: size or -1 when missing} in one round trip."""
        code = ("import os, json\nr={}\nfor p in %r:\n try:\n  r[p]=os.stat(p)[6]\n"
                " except OSError:\n  r[p]=-1\nprint(json.dumps(r))" % (sorted(paths),))
        return json.loads(self.exec(code).strip().splitlines()[-1])

    def soft_reset(self):
        """Restart the firmware (friendly REPL Ctrl-D)."""
        from mpremote.transport import TransportError
        try:
            self.t.exit_raw_repl()
            self.t.serial.write(b"\x04")
        except (OSError, TransportError):     # the board reset by itself: it reset anyway
            pass

    def close(self):
        from mpremote.transport import TransportError
        try:
            if self.t.in_raw_repl:
                self.t.exit_raw_repl()
        except (OSError, TransportError):     # a board that went away: nothing to leave
            pass
        try:
            self.t.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


CHUNK = 2048    # raw bytes per exec when writing a file (base64 in one raw-paste)


class deferred_sigint:
    """Within the block, Ctrl-C sets dev.stop_requested instead of raising mid-exchange (a
    half-finished raw REPL exchange cannot be used for the cleanup); the work checks it
    between whole exchanges. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self, dev):
        self.dev = dev
        self.old = None

    def _handler(self, signum, frame):
        if self.dev.stop_requested:
            raise KeyboardInterrupt
        self.dev.stop_requested = True

    def __enter__(self):
        import signal
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *a):
        import signal
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        self.dev.stop_requested = False     # the cleanup after the block may talk again


class _quiet:
    """mpremote prints what it read when it cannot enter the raw REPL (a stray b'' line on
    a silent port): keep that off the user's terminal; our error says it instead."""

    def __enter__(self):
        import contextlib
        import io
        self._cm = contextlib.redirect_stdout(io.StringIO())
        self._cm.__enter__()

    def __exit__(self, *a):
        self._cm.__exit__(*a)


def _one_line(e):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
