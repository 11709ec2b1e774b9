# PV inverter active-power limit: turns the dispatcher's curtail_w into a limit the
# inverter can apply, and tells the dispatcher how much PV is available behind it.
# Pure and integer only (no I/O): MicroPython and CPython.
#
# Why not simply "available = measured + curtail_w": the measurement lags the limit and
# the dispatcher's curtail depends on the PV it was given, so that sum feeds back and runs
# away. Instead, while the inverter sits at its limit the PV behind it is unknown (at
# least the limit), so the estimate taken when the limit started is kept; and the limit
# is placed at what the load and the battery take:
#   limited = L is not None and measured >= L - tol
#   est     = est kept from before the limit when limited, else measured
#   curtail > 0:  L = max(0, est - curtail)   (moved only by more than tol: bus writes)
#   curtail == 0: L = None (released)
# With the dispatcher's curtail = est - (load + charge - margin), L = load + charge -
# margin does not depend on est: a fixed point, not a runaway.
#
#     pl = PvLimit()
#     est = pl.available(measured_w, rating_w)   # before the dispatcher's step: its pv_w
#     lim = pl.limit(curtail_w, rating_w)        # after it: W to write, None = no limit
#     pct_cpct(lim, rating_w)                    # the limit in 0.01 % of rating, rounded down

# After the limit was raised the inverter needs a few steps to follow: until then a
# measurement below the new limit is lag, not "less PV than the limit" (taking it as the
# available PV would release the limit and export).
SETTLE_STEPS = 3
TOL_MIN_W = 50
# a limit is let go in steps of a tenth of the rating per control step, not at once: the
# dispatcher's curtail_w drops to 0 when it commands the charge that takes the surplus,
# but the PCS needs a moment to get there, and the PV released at once went out meanwhile
RELEASE_DIV = 10


def tol_w(rating_w):
    """Dead band: 1 % of the rating, at least TOL_MIN_W."""
    t = rating_w // 100 if rating_w > 0 else 0
    return t if t > TOL_MIN_W else TOL_MIN_W


def pct_cpct(lim_w, rating_w):
    """floor(lim_w * 10000 / rating_w) in 0.01 %, 0..10000, without intermediates above
    2**30 for ratings up to 10 MW (the limit never exceeds what was asked)."""
    if rating_w <= 0 or lim_w <= 0:
        return 0
    if lim_w >= rating_w:
        return 10000
    q, r = divmod(lim_w * 100, rating_w)
    return q * 100 + (r * 100) // rating_w


class PvLimit:
    def __init__(self):
        self.lim_w = None   # limit last asked for (None = released)
        self.est_w = None   # available PV estimate (None = nothing measured yet)
        self.limited = False
        self.settle = 0     # steps left in which a lower reading is the inverter's lag

    def available(self, measured_w, rating_w):
        """The PV available behind the inverter (W), for the dispatcher's pv_w."""
        m = measured_w if measured_w > 0 else 0
        L = self.lim_w
        lag = self.settle > 0
        if lag:
            self.settle -= 1
        self.limited = L is not None and (lag or m >= L - tol_w(rating_w))
        if not self.limited or self.est_w is None or m > self.est_w:
            self.est_w = m  # measured is all there is, or more than the kept estimate
        return self.est_w

    def limit(self, curtail_w, rating_w):
        """The limit (W, 0..rating) after the dispatcher asked for curtail_w, or None."""
        L = self.lim_w
        est = self.est_w if self.est_w is not None else 0
        if curtail_w <= 0:
            if L is None:
                return None
            st = rating_w // RELEASE_DIV if rating_w > 0 else 0
            if st <= 0 or L + st >= est or L + st >= rating_w:
                self.release()
                return None
            self.lim_w = L + st     # raised: the inverter lags (see SETTLE_STEPS)
            self.settle = SETTLE_STEPS
            return self.lim_w
        n = est - curtail_w
        if n < 0:
            n = 0
        if rating_w > 0 and n > rating_w:
            n = rating_w
        if L is None or n - L > tol_w(rating_w) or L - n > tol_w(rating_w):
            if L is not None and n > L:
                self.settle = SETTLE_STEPS
            self.lim_w = n
        return self.lim_w

    def release(self):
        self.lim_w = None
        self.settle = 0
        self.limited = False
