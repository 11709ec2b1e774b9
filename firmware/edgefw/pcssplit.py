# Split the site setpoint over several PCS (pure, integers, allocation-free per call):
# shares by rating (weights in 1/10000 of the sum), each clamped to its own limit for
# the direction (its rating, its packs' ccl/dcl, 0 when stopped), what a clamped PCS
# cannot take goes to the others (water-filling), and the floor remainders go +1 W each
# to the open PCS in config order, so the shares add up exactly to the setpoint (or to
# the sum of the limits, if that is less). Every intermediate < 2**30 (fx.mdiv).
from edgefw.fx import frac, mdiv


class Split:
    def __init__(self, ratings):
        """ratings: one int > 0 (W) or None per PCS; all None = equal shares."""
        n = len(ratings)
        self.n = n
        tot = 0
        for r in ratings:
            tot += r or 0
        self.w = [0] * n      # weight, 1..10000 (sum <= 10000 + n)
        for i in range(n):
            r = ratings[i]
            w = frac(r, tot) if tot and r else 0 if tot else 10000 // n
            self.w[i] = w if w > 0 else 1
        self.out = [0] * n    # the shares of the last split, W (sign of the setpoint)
        self._open = [False] * n

    def split(self, sp, lim):
        """Fill out with the shares of sp (W, + = discharge); lim[i] >= 0: the most W
        PCS i may take in sp's direction. Returns the total given (sp, or less when the
        limits add up to less)."""
        n = self.n
        out = self.out
        op = self._open
        w = self.w
        neg = sp < 0
        left = -sp if neg else sp
        cap = 0
        for i in range(n):
            out[i] = 0
            op[i] = lim[i] > 0
            cap += lim[i]
        if left > cap:
            left = cap
        given = left
        while left > 0:
            ws = 0
            for i in range(n):
                if op[i]:
                    ws += w[i]
            clamped = False
            for i in range(n):
                if op[i] and mdiv(left, w[i], ws) >= lim[i]:
                    out[i] = lim[i]
                    op[i] = False
                    clamped = True
            if clamped:
                left = given
                for i in range(n):
                    if not op[i]:
                        left -= out[i]
                continue
            rest = left
            for i in range(n):
                if op[i]:
                    s = mdiv(left, w[i], ws)
                    out[i] = s
                    rest -= s
            i = 0
            while rest > 0 and i < n:
                if op[i]:  # s < lim[i] here: one more W still fits
                    out[i] += 1
                    rest -= 1
                i += 1
            break
        if neg:
            for i in range(n):
                out[i] = -out[i]
            return -given
        return given
