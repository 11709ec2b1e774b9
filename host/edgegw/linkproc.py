"""The link driver process (link_driver.py under MicroPython) seen from the host: the
link bench and tests/host/test_link.py start it and wait for its JSON lines."""
import json
import os
import subprocess
import threading
import time

from edgegw.pairing import Inbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")
MICROPYPATH = ".frozen:%s:%s" % (REPO, os.path.join(REPO, "firmware"))
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "link_driver.py")


class LinkProc:
    """A link_driver.py process ('mqtt ...' or 'link CFG.json'); every line it printed is in
    .lines, and wait(pred) returns the next one pred accepts."""

    def __init__(self, *args):
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        self.p = subprocess.Popen([MICROPYTHON, "-X", "heapsize=2m", DRIVER] + list(args),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=REPO)
        self.inbox = Inbox()
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for ln in self.p.stdout:
            try:
                d = json.loads(ln)
            except ValueError:
                d = {"ev": "text", "text": ln.rstrip()}
            d["_t"] = time.monotonic()
            self.lines.append(d)
            self.inbox.put(d)

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait(self, pred, timeout=10.0, what="event"):
        try:
            return self.inbox.wait(pred, timeout, what)
        except TimeoutError as e:
            raise TimeoutError("link driver: %s; it said: %s" % (e, self.lines[-15:])) from None

    def state(self, st, timeout=15):
        return self.wait(lambda d: d["ev"] == "state" and d["state"] == st, timeout,
                         "state " + st)

    def quit(self):
        self.send("quit")
        d = self.wait(lambda d: d["ev"] == "bye", what="bye")
        self.p.wait(5)
        return d

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    close = kill
