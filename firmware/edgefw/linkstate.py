# The link-loss state machine the control loop reads (docs/mqtt.md):
#   ONLINE     cloud setpoints apply
#   GRACE      link lost: the last cloud setpoint is held at most grace_s
#   FALLBACK   local dispatch (following the last schedule until it expires)
#   RECOVERING link back: ramp from the local setpoint to the cloud one, then ONLINE
# Loss = the MQTT connection fails or, if loss_s > 0, no valid command for loss_s.
from edgefw import clock

ONLINE = "ONLINE"
GRACE = "GRACE"
FALLBACK = "FALLBACK"
RECOVERING = "RECOVERING"


class LinkState:
    def __init__(self, cfg, now_ms, on_change):
        self.cfg = cfg           # grace_s, loss_s, recover_s, ramp_w_s
        self.on_change = on_change  # (from, to, why): the link's state event
        self.state = FALLBACK    # no cloud setpoint yet: local dispatch
        self.since_ms = now_ms   # when the state was entered
        self.heard_ms = now_ms   # the last genuine cloud message (or connect)
        self.sp = None           # the last cloud setpoint {p_w, exp, exp_r, seq}
        self.ramp_w = None       # RECOVERING: the ramped W now
        self.ramp_carry = 0      # W x ms below one W, carried to the next step
        self.local_w = None      # what local dispatch did last (the ramp's start)

    def setpoint(self, now_s, local_w=None, rel=False):
        """The cloud setpoint (W, + = discharge) to apply now, or None = local dispatch.
        now_s: unix s, or with rel s since clock.EPOCH (clock.rel(): a small int on
        32-bit where unix time is a long int). local_w: what local dispatch would do now
        (the start of the bumpless ramp). The caller still bounds the result."""
        if local_w is not None:
            self.local_w = local_w
        sp = self.sp
        live = sp is not None and sp["exp_r" if rel else "exp"] > now_s
        if self.state == ONLINE or self.state == GRACE:
            return sp["p_w"] if live else None
        if self.state == RECOVERING and live:
            if self.ramp_w is None:
                self.ramp_w = sp["p_w"] if self.local_w is None else self.local_w
                self.ramp_carry = 0
            return self.ramp_w
        return None

    def _set(self, st, now, why):
        old = self.state
        self.state = st
        self.since_ms = now
        if st != RECOVERING:
            self.ramp_w = None
        self.on_change(old, st, why)

    def step(self, now, dt, connected):
        ls = self.cfg["loss_s"]
        silent = ls and clock.ticks_diff(now, self.heard_ms) >= ls * 1000
        up = connected and not silent
        in_state = clock.ticks_diff(now, self.since_ms)
        st = self.state
        if st == ONLINE:
            if not up:
                self._set(GRACE, now, "cloud silent" if silent else "broker lost")
        elif st == GRACE:
            if up:
                self._set(ONLINE, now, "link back within grace")
            elif in_state >= self.cfg["grace_s"] * 1000:
                self._set(FALLBACK, now, "grace expired")
        elif st == FALLBACK:
            if up:
                self._set(RECOVERING, now, "link back")
        elif st == RECOVERING:
            if not up:
                self._set(FALLBACK, now, "link lost while recovering")
            elif self.ramp_w is not None and self.sp is not None:
                self._ramp_step(dt)
                if self.ramp_w == self.sp["p_w"]:
                    self._set(ONLINE, now, "ramp done")
            elif in_state >= self.cfg["recover_s"] * 1000:
                self._set(ONLINE, now, "no cloud setpoint to ramp to")

    def _ramp_step(self, dt):
        # toward the cloud setpoint at ramp_w_s, integer W with the remainder carried
        if dt <= 0:
            return
        if dt > 1000:
            dt = 1000
        inc = self.cfg["ramp_w_s"] * dt + self.ramp_carry  # <= 1e9 < 2**30
        step = inc // 1000
        self.ramp_carry = inc - step * 1000
        tgt = self.sp["p_w"]
        r = self.ramp_w
        if r < tgt:
            r = min(tgt, r + step)
        else:
            r = max(tgt, r - step)
        self.ramp_w = r
