# Live SunSpec scale factors ("sf" points): runs under CPython (pytest) and MicroPython.
from protocols import regmap as r
from _helpers import raises

DOC = {"name": "t", "points": {
    "p_w": {"table": "holding", "addr": 10, "type": "s32", "sf": "w_sf"},
    "u_dv": {"table": "holding", "addr": 12, "type": "u16", "mul": 10, "sf": "v_sf"},
    "w_sf": {"table": "holding", "addr": 13, "type": "s16"},
    "v_sf": {"table": "holding", "addr": 14, "type": "s16"}}}


def _regs(p_hi, p_lo, u, wsf, vsf):
    return [p_hi, p_lo, u, wsf & 0xFFFF, vsf & 0xFFFF]


def test_value_follows_the_scale_factor_read_with_it():
    m = r.build(DOC)
    # 12345 raw W: SF 0, -1, -2, +1; the voltage 2301 raw V x 10^-1 = 230.1 V = 2301 dV
    for sf, want in ((0, 12345), (-1, 1235), (-2, 123), (1, 123450), (-3, 12)):
        got = r.decode(m, 3, 10, _regs(0, 12345, 2301, sf, -1))
        assert got["p_w"] == want and got["u_dv"] == 2301, (sf, got)
        assert got["w_sf"] == sf
    # negative values round half away from zero like every other point
    got = r.decode(m, 3, 10, _regs(0xFFFF, 0xFFFF - 14, 0, -1, 0))  # raw -15, SF -1
    assert got["p_w"] == -2, got
    assert r.decode(m, 3, 10, _regs(0, 5, 0, 0, 2))["u_dv"] == 0  # 0 V x 100 x 10


def test_unknown_scale_factor_leaves_the_value_out():
    m = r.build(DOC)
    # the SF register is not in this read: never scaled with a guess
    got = r.decode(m, 3, 10, [0, 500, 2301])
    assert "p_w" not in got and "u_dv" not in got, got
    # 0x8000 = not implemented, and anything outside -10..10
    for sf in (-32768, 11, -11, 200):
        got = r.decode(m, 3, 10, _regs(0, 500, 2301, sf, -1))
        assert "p_w" not in got and got["u_dv"] == 2301, (sf, got)
    # SunSpec's "not implemented" raw value of the point itself
    got = r.decode(m, 3, 10, _regs(0x8000, 0, 0xFFFF, 0, -1))
    assert "p_w" not in got and "u_dv" not in got, got


def test_plan_reads_the_scale_factor_with_its_value():
    m = r.build(DOC)
    assert r.plan(m, ["p_w"]) == [(3, 10, 4)]
    assert r.plan(m, ["u_dv"]) == [(3, 12, 3)]
    for name in ("sunspec_pcs", "sunspec_pv"):
        m = r.load(name)
        for pn, p in m.points.items():
            if "sf" not in p:
                continue
            for names in (None, [pn]):
                a = p["addr"]
                s = m.points[p["sf"]]["addr"]
                one = [q for q in r.plan(m, names) if q[1] <= a and a < q[1] + q[2]][0]
                assert one[1] <= s < one[1] + one[2], (name, pn, names, one)


def test_simulator_encoding_uses_the_scale_factor_shown():
    m = r.load("sunspec_pv")
    img = {40003: (-2) & 0xFFFF}
    t, a, w = r.encode_point(m, "p_w", 4321, img)
    assert (t, a) == ("holding", 40000) and w == [432100 >> 16, 432100 & 0xFFFF], w
    got = r.decode(m, 3, 40000, w + [0, img[40003]])
    assert got["p_w"] == 4321 and got["w_sf"] == -2, got


def test_bad_sf_fields_are_refused():
    def doc(**over):
        d = {"name": "t", "points": {"a": {"table": "holding", "addr": 0, "sf": "s"},
                                     "s": {"table": "holding", "addr": 1, "type": "s16"}}}
        d["points"]["a"].update(over)
        return d
    r.build(doc())
    for bad in (doc(sf="nope"), doc(sf=3), doc(type="f32"), doc(access="rw", min=0, max=9),
                doc(values=[[1, 2]])):
        e = raises(r.RegMapError, r.build, bad)
        assert "sf" in str(e), str(e)
    d = doc()
    d["points"]["s"]["type"] = "u16"
    assert "s16" in str(raises(r.RegMapError, r.build, d))


def test_gateway_device_takes_the_scale_factor_of_each_poll():
    from edgefw import devices
    m = r.load("sunspec_pcs")
    d = devices.Device({"name": "pcs", "role": "pcs", "slave": 1, "bus": "bus0",
                        "period_ms": 1000, "points": ["p_w", "state"]}, m)
    assert d.reads == [(3, 40000, 10)]   # p_w's W_SF (40009) is in the same read
    regs = [0] * 10
    regs[4] = 4                          # state running
    regs[9] = (-1) & 0xFFFF              # W_SF -1
    t, a, w = r.encode_point(m, "p_w", -2500, {40009: regs[9]})
    regs[0], regs[1] = w
    d.on_read(3, 40000, regs, 1000)
    assert d.values["p_w"] == -2500 and d.t["p_w"] == 1000 and d.values["w_sf"] == -1
    regs[9] = 1                          # the inverter changed W_SF, same raw (-25000)
    d.on_read(3, 40000, regs, 2000)
    assert d.values["p_w"] == -250000 and d.t["p_w"] == 2000
    regs[9] = 0x8000                     # not implemented: p_w is not refreshed
    d.on_read(3, 40000, regs, 3000)
    assert d.values["p_w"] == -250000 and d.t["p_w"] == 2000 and d.t["state"] == 3000
