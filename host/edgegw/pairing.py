"""Request/response pairing, one routine for the host, the benches and the HIL cloud:
a command carries a seq and the gateway's ack carries it back (`command`, `is_ack_of`);
what arrives goes into an `Inbox` and a caller waits for the one message it asked for."""
import queue
import time

from edgefw import auth
from protocols import topics as T


def command(key, device, leaf, payload, seq, ts, exp_s, sign=True):
    """The command dict {**payload, seq, ts, exp} (+ sig, signed for device and leaf)."""
    cmd = dict(payload, seq=seq, ts=ts, exp=ts + exp_s)
    if sign:
        auth.sign(key, device, T.COMMANDS[leaf], cmd)
    return cmd


def is_ack_of(cmd):
    """Predicate: this message is the gateway's ack of cmd (same seq)."""
    seq = cmd["seq"]
    return lambda a: isinstance(a, dict) and a.get("seq") == seq


class Inbox:
    """Messages from a reader thread (or process: q may be a multiprocessing queue).
    wait(pred) returns the first that matches; keep=True holds the others for a later wait
    (replies of several kinds interleave), keep=False drops them (a later wait must see only
    what came after, e.g. the next state change)."""

    def __init__(self, q=None, keep=False):
        self.q = queue.Queue() if q is None else q
        self.keep = keep
        self.kept = []

    def put(self, x):
        self.q.put(x)

    def wait(self, pred, timeout, what="reply", fail=True):
        """The first message pred accepts within timeout s; TimeoutError (or None when
        fail is False) when none came."""
        for i in range(len(self.kept)):
            if pred(self.kept[i]):
                return self.kept.pop(i)
        t_end = time.monotonic() + timeout
        while True:
            left = t_end - time.monotonic()
            if left <= 0:
                if fail:
                    raise TimeoutError("no %s within %.1f s" % (what, timeout))
                return None
            try:
                x = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(x):
                return x
            if self.keep:
                self.kept.append(x)
