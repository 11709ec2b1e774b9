# Several PCS behind one site setpoint: one PcsCtl each (its own acknowledged writes,
# readback, mismatch event), the setpoint split by pcssplit over the PCS that may run
# (each one's limit from packs.py; 0 for one the interlock stopped), and the face
# control.py and app.py use of a single PcsCtl (acked, ack, act, stop, shutdown...).
# app.py builds it only for more than one PCS: one-PCS sites use PcsCtl as before.
from edgefw import clock
from edgefw.pcsctl import PcsCtl
from edgefw.pcssplit import Split


class _Act:
    """What control.py reads of PcsCtl.act, over the group."""

    def __init__(self, ctls):
        self.ctls = ctls

    @property
    def chg_t(self):
        t = None
        for c in self.ctls:
            x = c.act.chg_t
            if x is not None and (t is None or clock.ticks_diff(x, t) > 0):
                t = x
        return t

    @property
    def prev(self):
        # the setpoints before the last acknowledged changes (pcs_now uses it only when
        # it is below the acknowledged one: the lower, conservative reading)
        tot = 0
        for c in self.ctls:
            p = c.act.prev if c.act.prev is not None else c.ack["p_set_w"]
            if p is None:
                return None
            tot += p
        return tot

    @property
    def wr_fail(self):
        n = 0
        for c in self.ctls:
            n += c.act.wr_fail
        return n


class PcsGroup:
    def __init__(self, devs, site, buses, safety, err, event, refresh_ms, period_ms):
        self.enabled = True
        self.site = site
        self.safety = safety
        self.ctls = []
        rat = []
        for d in devs:
            self.ctls.append(PcsCtl(d, buses, safety, err, event, refresh_ms, period_ms))
            rat.append(d.rating_w)
        self.split = Split(rat)
        self.lim = [0] * len(devs)
        self.act = _Act(self.ctls)
        self.want_w = None
        self.want_run = None

    def want(self, w, run):
        self.want_w = w
        self.want_run = run
        if w is None:
            for c in self.ctls:
                c.want(None, run)
            return
        pk = self.site.packs
        lim = self.lim
        for i in range(len(self.ctls)):
            if self.safety.stopped(self.ctls[i].dev.name):
                lim[i] = 0
            else:
                lim[i] = pk.dis[i] if w >= 0 else pk.chg[i]
        self.split.split(w, lim)
        out = self.split.out
        for i in range(len(self.ctls)):
            self.ctls[i].want(out[i], run)

    def shares(self):
        """{pcs name: [W asked for, W acknowledged, run acknowledged]} (status)."""
        out = {}
        for c in self.ctls:
            out[c.dev.name] = [c.want_w, c.ack["p_set_w"], c.ack["run"]]
        return out

    def pending(self):
        for c in self.ctls:
            if c.pending():
                return True
        return False

    def acked(self):
        """Sum of the acknowledged setpoints of the PCS that may run (a stopped one is at
        0 W or not answering); None when one of those is unknown."""
        tot = 0
        for c in self.ctls:
            if self.safety.stopped(c.dev.name):
                continue
            a = c.acked()
            if a is None:
                return None
            tot += a
        return tot

    @property
    def ack(self):
        run = 0
        tot = 0
        for c in self.ctls:
            a = c.ack
            if a["p_set_w"] is None or a["run"] is None:
                return {"p_set_w": None, "run": None}
            tot += a["p_set_w"]
            run = run or a["run"]
        return {"p_set_w": tot, "run": run}

    @property
    def mismatches(self):
        n = 0
        for c in self.ctls:
            n += c.mismatches
        return n

    def stop(self):
        for c in self.ctls:
            c.stop()

    def service(self, now):
        for c in self.ctls:
            c.service(now)

    def check(self, now, site):
        for c in self.ctls:
            c.check(now, site)

    def shutdown(self):
        for c in self.ctls:
            c.shutdown()
