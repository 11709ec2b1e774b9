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
