# Acknowledged writes (edgefw/actuator.py) on a real bus master and register map: a write
# counts only when the device answered every frame; each Actuator keeps its own tables,
# so two of them may write points of the same name (the PCS's and the PV inverter's used
# to share one table keyed by point name).
from edgefw import clock
from edgefw.actuator import Actuator
from test_app_bounds import Rig


def _settle(r, acts, ms=1000):
    m = r.a.buses.master("batt")
    t0 = clock.ticks_ms()
    while clock.ticks_diff(clock.ticks_ms(), t0) < ms:
        m.poll()
        if all(a.pend["p_set_w"] is None for a in acts):
            return True
        clock.sleep_ms(1)
    return False


def test_two_actuators_keep_their_own_acknowledgements():
    r = Rig(control={"mode": "off", "period_ms": 100})
    try:
        r.passes(300)
        m = r.a.buses.master("batt")
        d = r.a.site.dev("pcs")
        one = Actuator(d, m, ("p_set_w",), r.a.health.err, "p_set_w")
        two = Actuator(d, m, ("p_set_w",), r.a.health.err)
        assert one.write("p_set_w", 700) and _settle(r, (one,))
        assert one.ack["p_set_w"] == 700 and r.pcs.get("p_set_w") == 700
        assert two.ack["p_set_w"] is None           # not the other's acknowledgement
        assert one.chg_t is not None and one.prev is None and two.chg_t is None
        r.pcs.refuse = ("p_set_w",)
        assert two.write("p_set_w", 900) and _settle(r, (two,))
        assert two.ack["p_set_w"] is None and two.wr_fail == 1 and two.fails == 1
        assert one.ack["p_set_w"] == 700 and one.wr_fail == 0
        assert two.paced()                          # until the bus finished a read
        r.pcs.refuse = ()
        assert two.write("p_set_w", 900) and _settle(r, (two,))
        assert two.ack["p_set_w"] == 900 and two.fails == 0 and not two.paced()
        # the device now holds 900: one's readback differs from its acknowledgement
        r.passes(300)
        one.lost("p_set_w")
        assert one.ack["p_set_w"] is None
    finally:
        r.done()


def test_no_master_writes_nothing():
    r = Rig(control={"mode": "off", "period_ms": 100})
    try:
        a = Actuator(r.a.site.dev("pcs"), None, ("p_set_w",), r.a.health.err)
        assert not a.write("p_set_w", 100) and a.pend["p_set_w"] is None
    finally:
        r.done()
