# The PV inverter (role pv_inverter): the PV available behind its limit (pvlimit's
# estimate) and the limit written through its own acknowledged writes (lim_cpct, then
# lim_ena). docs/firmware.md "PV curtailment". A site without one has a PvCtl with
# enabled False: nothing is read or written, the measured PV is all there is.
from edgefw.actuator import Actuator


class PvCtl:
    def __init__(self, dev, pvlimit, master, safety, err):
        """pvlimit: the module (imported only for a site with a PV inverter), or None."""
        self.enabled = dev is not None and pvlimit is not None
        self.dev = dev
        self.pvlimit = pvlimit
        self.safety = safety
        self.pvl = pvlimit.PvLimit() if self.enabled else None
        self.act = Actuator(dev, master if self.enabled else None, ("lim_cpct", "lim_ena"), err)
        self.limit_w = None     # limit asked for (W), None = released
        self.want = (None, None)  # (lim_cpct, lim_ena) wanted; ena None = nothing yet
        self.avail_w = None     # PV available behind the limit (estimate), while limited

    def read(self, site, now):
        """(AC power W, rating W) of the PV inverter, or (None, None) when either is
        unknown, stale or the rating is not positive (or there is no inverter)."""
        if not self.enabled:
            return None, None
        d = self.dev
        m, _, q = site.point(d, "p_w", now)
        r, _, qr = site.point(d, "wmax_w", now)
        if m is None or r is None or q != 0 or qr != 0 or r <= 0:
            return None, None
        return m, r

    def available(self, pv, pvm, rat):
        """The site's PV with the inverter's share replaced by the PV available behind
        its limit (kept from before the limit while the inverter sits at it: a fixed
        point, not a runaway); pvm, rat from read()."""
        self.avail_w = None
        if pvm is None:
            return pv
        est = self.pvl.available(pvm, rat)
        if pv is not None:
            pv = pv - pvm + est
            if self.pvl.limited:
                self.avail_w = pv
        return pv

    def est_w(self):
        return self.pvl.est_w or 0

    def shed(self):
        """The PV really shed (W): the limit in force moves only beyond its dead band."""
        L = self.pvl.lim_w
        return 0 if L is None else max(0, (self.pvl.est_w or 0) - L)

    def service(self, rat):
        """Write the wanted limit through the acknowledged write path: lim_cpct (0.01 %
        of the rating, rounded down, also to the map's step) first, lim_ena = 1 only
        once that is acknowledged; released: lim_ena = 0. Unacknowledged writes and a
        readback that differs from the acknowledged value (power cycle) go again at the
        next control step; nothing while the inverter is stale."""
        d = self.dev
        L = self.pvl.lim_w
        c, e = self.want
        if L is None:
            c, e = None, 0
        elif rat is not None:
            c = self.pvlimit.pct_cpct(L, rat)
            g = d.map.points["lim_cpct"].get("mul", 1)
            c -= c % g
            e = 1
        self.limit_w = L
        self.want = (c, e)
        if e is None or (e == 1 and c is None) or d.stale():
            return
        act = self.act
        ack = act.ack
        pend = act.pend
        if c is not None:
            act.lost("lim_cpct")
        if e is not None:
            act.lost("lim_ena")
        if c is not None and pend["lim_cpct"] is None and ack["lim_cpct"] != c:
            act.write("lim_cpct", c)
        # lim_ena = 1 once lim_cpct is acknowledged (an enable ahead of a failed percent
        # would apply whatever percent the inverter held); on a trip right behind it (the
        # bus keeps the order): the stopped PCS no longer takes the surplus, every control
        # step of waiting exports it
        pc = pend["lim_cpct"]
        if pend["lim_ena"] is None and ack["lim_ena"] != e and (
                e == 0 or (ack["lim_cpct"] == c and pc is None)
                or (self.safety.tripped and pc is not None and pc.value == c)):
            act.write("lim_ena", e)

    def status(self):
        if not self.enabled:
            return None
        return {"want": list(self.want),
                "ack": [self.act.ack["lim_cpct"], self.act.ack["lim_ena"]]}
