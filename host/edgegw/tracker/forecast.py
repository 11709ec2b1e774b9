"""Short-horizon forecast of the measured compute load, integers only (so the same code could run
on the gateway): Holt exponential smoothing (level + trend) with ramp detection, then
combined with the job-queue forecast.

Fixed point: level in W/4 (`_q2`), trend in (W/4) per minute, gains alpha/beta in 1/64 (`_q6`).
Inputs are clamped to 0..MAX_W, the trend to +-TREND_MAX_Q2, dt and horizon to 3600 s, so every
product stays below 2**30: |x - level| * alpha <= 2**22 * 64 = 2**28; level * jump_pct
<= 2**22 * 100; |slope - trend| * beta <= 2**19 * 64; trend * 3600 s < 2**18 * 2**12 = 2**30.
"""
from edgefw.fx import clamp, div_round, div_trunc

MAX_W = 1000000          # 1 MW: an edge node is far below; bounds the fixed-point products
TREND_MAX_Q2 = 1 << 18   # 65 kW per minute, well beyond any edge node's ramp


class Smoother:
    """alpha_q6/beta_q6: level/trend gains (16 = 0.25, 8 = 0.125). A sample further than
    jump_w (or jump_pct of the level) from the prediction is a step: the level jumps to it and
    the trend restarts, so a job start shows at once instead of over many samples. A trend
    beyond ramp_w_min (W per minute) is a ramp. The trend is extrapolated no further ahead than
    the ramp has lasted so far (a noise blip projects nothing), and at most damp_s seconds (a
    ramp does not go on for hours)."""

    def __init__(self, alpha_q6=16, beta_q6=8, jump_w=200, jump_pct=20, ramp_w_min=50,
                 damp_s=600):
        for k, v, lo, hi in (("alpha_q6", alpha_q6, 1, 64), ("beta_q6", beta_q6, 0, 64),
                             ("jump_w", jump_w, 1, MAX_W), ("jump_pct", jump_pct, 1, 100),
                             ("ramp_w_min", ramp_w_min, 1, MAX_W), ("damp_s", damp_s, 0, 3600)):
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError("%s: %r not an int in %d..%d" % (k, v, lo, hi))
        self.alpha_q6 = alpha_q6
        self.beta_q6 = beta_q6
        self.jump_w = jump_w
        self.jump_pct = jump_pct
        self.ramp_w_min = ramp_w_min
        self.damp_s = damp_s
        self.level_q2 = None
        self.trend_q2 = 0       # (W/4) per minute
        self.ramp = None        # None, "up", "down", "step_up", "step_down"
        self.ramp_s = 0         # how long the present ramp has lasted (s)
        self.n = 0

    @property
    def level_w(self):
        return 0 if self.level_q2 is None else div_round(self.level_q2, 4)

    @property
    def trend_w_min(self):
        return div_round(self.trend_q2, 4)

    def update(self, x_w, dt_s):
        """Feed one measurement taken dt_s seconds after the previous one."""
        x = clamp(int(x_w), 0, MAX_W) * 4
        self.n += 1
        if self.level_q2 is None or dt_s <= 0:
            if self.level_q2 is None:
                self.level_q2 = x
            return self.ramp
        dt_s = min(int(dt_s), 3600)
        pred = clamp(self.level_q2 + div_trunc(self.trend_q2 * dt_s, 60), 0, MAX_W * 4)
        err = x - pred
        lim = max(self.jump_w * 4, div_trunc(pred * self.jump_pct, 100))
        if abs(err) > lim:
            self.level_q2 = x
            self.trend_q2 = 0
            self.ramp = "step_up" if err > 0 else "step_down"
            self.ramp_s = 0
            return self.ramp
        old = self.level_q2
        self.level_q2 = pred + div_round(err * self.alpha_q6, 64)
        slope = clamp(div_trunc((self.level_q2 - old) * 60, dt_s), -TREND_MAX_Q2, TREND_MAX_Q2)
        self.trend_q2 += div_round((slope - self.trend_q2) * self.beta_q6, 64)
        tw = self.trend_w_min
        r = "up" if tw >= self.ramp_w_min else "down" if tw <= -self.ramp_w_min else None
        self.ramp_s = min(self.ramp_s + dt_s, 3600) if r and r == self.ramp else 0
        self.ramp = r
        return self.ramp

    def forecast(self, n, step_s):
        """W at the middle of each of the next n steps (integer list, >= 0)."""
        out = []
        for k in range(n):
            ahead = min(k * step_s + step_s // 2, self.damp_s, self.ramp_s)
            q = self.level_q2 or 0
            if self.ramp in ("up", "down"):   # below the ramp threshold the trend is noise
                q += div_trunc(self.trend_q2 * ahead, 60)
            out.append(clamp(div_round(q, 4), 0, MAX_W))
        return out


def combine(base_w, queue_w, queue_now_w):
    """Total forecast = measured-load forecast + change the queue brings relative to now (the
    jobs running now are already in the measurement)."""
    if len(base_w) != len(queue_w):
        raise ValueError("base_w/queue_w: lengths %d and %d differ" % (len(base_w), len(queue_w)))
    return [clamp(b + q - queue_now_w, 0, MAX_W) for b, q in zip(base_w, queue_w)]
