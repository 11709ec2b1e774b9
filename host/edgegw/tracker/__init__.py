"""Compute-load tracker: measure the node's IT load (sources), read planned jobs (queue),
forecast the next minutes to hours (forecast) and send it to the gateway (publish).
docs/tracker.md describes the whole."""
from edgegw.tracker import forecast as _fc
from edgegw.tracker import publish as _pub
from edgegw.tracker import queue as _q


class Tracker:
    """One `tick(now, measured_w, source)` per measurement -> forecast payload.

    jobs_fn(now) -> job list (queue file re-read, squeue) or None for measurement only.
    step_s x steps is the horizon (default 60 s x 240 = 4 h), t0 on a step boundary (a job
    keeps its place in the grid from one message to the next); valid_s how long the gateway
    may use the forecast (exp = ts + valid_s), in fallback too.
    Sending: refresh_s None sends every tick; else a message goes out when the forecast moved
    by more than max(change_w, change_pct of the value) in any step, or refresh_s after the
    last one (the gateway stores each forecast on flash: no need to rewrite an unchanged one).
    """

    def __init__(self, jobs_fn=None, step_s=60, steps=240, valid_s=3600, smoother=None, key=None,
                 device_id=None, queued_delay_s=0, refresh_s=None, change_w=100, change_pct=10,
                 site_fn=None):
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
        if refresh_s is not None and not 1 <= refresh_s < valid_s:
            raise ValueError("refresh_s: %r must be 1.. below valid_s %d" % (refresh_s, valid_s))
        self.refresh_s = refresh_s
        self.change_w = change_w
        self.change_pct = change_pct
        self.sent = None          # (ts, t0, load_w) of the last message sent
        # site_fn(t0, step_s, steps) -> {"pv_w": [...], "aux_w": [...]} or {} (siteforecast)
        self.site_fn = site_fn

    def forecast(self, now):
        """(t0, base, queue, total) lists for the horizon from the step holding `now`."""
        t0 = now - now % self.step_s
        base = self.sm.forecast(self.steps, self.step_s)
        if self.jobs:
            ql = _q.load_w(self.jobs, t0, self.step_s, self.steps, self.queued_delay_s)
            qnow = _q.running_w(self.jobs, now)
        else:
            ql, qnow = [0] * self.steps, 0
        return t0, base, ql, _fc.combine(base, ql, qnow)

    def changed(self, t0, total):
        """Does `total` (from t0) differ from the last sent forecast where both cover?"""
        if self.sent is None:
            return True
        _, pt0, prev = self.sent
        sh = (t0 - pt0) // self.step_s
        for k in range(len(total)):
            j = k + sh
            if 0 <= j < len(prev):
                if abs(total[k] - prev[j]) > max(self.change_w, prev[j] * self.change_pct // 100):
                    return True
        return False

    def tick(self, now, measured_w, source, force=False):
        """The message to send now, or None when the last one still says the same."""
        now = int(now)
        dt = 0 if self.last_t is None else now - self.last_t
        self.last_t = now
        self.sm.update(measured_w, dt)
        if self.jobs_fn:
            self.jobs = self.jobs_fn(now) or []
        t0, _, _, total = self.forecast(now)
        if not (force or self.refresh_s is None or self.sent is None
                or now - self.sent[0] >= self.refresh_s or self.changed(t0, total)):
            return None
        self.sent = (now, t0, total)
        # seq stays monotonic across restarts as long as we send at most one message a second
        self.seq = max(self.seq + 1, now)
        site = self.site_fn(t0, self.step_s, self.steps) if self.site_fn else None
        msg = _pub.build(self.seq, now, now + self.valid_s, t0, self.step_s, total,
                         int(measured_w), source, site)
        return _pub.sign(msg, self.key, self.device_id) if self.key else msg
