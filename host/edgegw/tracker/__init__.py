"""Compute-load tracker: measure the node's IT load (sources), read planned jobs (queue),
forecast the next minutes to hours (forecast) and send it to the gateway (publish).
docs/tracker.md describes the whole."""
from edgegw.tracker import forecast as _fc
from edgegw.tracker import publish as _pub
from edgegw.tracker import queue as _q


class Tracker:
    """One `tick(now, measured_w, source)` per measurement -> forecast payload.

    jobs_fn(now) -> job list (queue file re-read, squeue) or None for measurement only.
    step_s x steps is the horizon (default 60 s x 240 = 4 h); valid_s how long the gateway may
    use the forecast (exp = ts + valid_s), in fallback too.
    """

    def __init__(self, jobs_fn=None, step_s=60, steps=240, valid_s=3600, smoother=None, key=None,
                 device_id=None, queued_delay_s=0):
        if not _pub.MIN_STEP_S <= step_s <= _pub.MAX_STEP_S:
            raise ValueError("step_s: %r not in %d..%d" % (step_s, _pub.MIN_STEP_S, _pub.MAX_STEP_S))
        if not 1 <= steps <= _pub.MAX_STEPS:
            raise ValueError("steps: %r not in 1..%d" % (steps, _pub.MAX_STEPS))
        if not 1 <= valid_s <= 86400:
            raise ValueError("valid_s: %r not in 1..86400" % (valid_s,))
        self.jobs_fn = jobs_fn
        self.step_s = step_s
        self.steps = steps
        self.valid_s = valid_s
        self.sm = smoother or _fc.Smoother()
        if key is not None and not device_id:
            raise ValueError("device_id: needed to sign (the signature binds it)")
        self.key = key
        self.device_id = device_id
        self.seq = 0
        self.last_t = None
        self.jobs = []
        self.queued_delay_s = queued_delay_s

    def forecast(self, now):
        """(t0, base, queue, total) lists for the horizon starting at `now`."""
        t0 = now
        base = self.sm.forecast(self.steps, self.step_s)
        if self.jobs:
            ql = _q.load_w(self.jobs, t0, self.step_s, self.steps, self.queued_delay_s)
            qnow = _q.running_w(self.jobs, now)
        else:
            ql, qnow = [0] * self.steps, 0
        return t0, base, ql, _fc.combine(base, ql, qnow)

    def tick(self, now, measured_w, source):
        now = int(now)
        dt = 0 if self.last_t is None else now - self.last_t
        self.last_t = now
        self.sm.update(measured_w, dt)
        if self.jobs_fn:
            self.jobs = self.jobs_fn(now) or []
        t0, _, _, total = self.forecast(now)
        # seq stays monotonic across restarts as long as we send at most one message a second
        self.seq = max(self.seq + 1, now)
        msg = _pub.build(self.seq, now, now + self.valid_s, t0, self.step_s, total,
                         int(measured_w), source)
        return _pub.sign(msg, self.key, self.device_id) if self.key else msg
