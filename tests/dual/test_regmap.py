# Register maps: runs under CPython (pytest) and MicroPython (tools/mpytest.py).
from protocols import regmap as r
from _helpers import raises, Rand, MICROPYTHON

MAPS = ("sdm630", "sdm120", "dtsu666", "dtsd1352", "seplos_v3", "sunspec_pcs", "sungrow_sh",
        "sunspec_pv", "seplos_v3_bank")
METER = ("p_w", "e_imp_wh", "e_exp_wh", "u1_dv", "i1_ma", "f_chz", "pf_milli")
BMS = ("soc_cpct", "soh_cpct", "v_cv", "i_ca", "cell_max_mv", "cell_min_mv", "t_max_cdc",
       "t_min_cdc", "ccl_ca", "dcl_ca", "cycles", "alarm", "protect")
PCS = ("p_w", "p_set_w", "run", "fault", "state")
PVINV = ("p_w", "wmax_w", "lim_cpct", "lim_ena")
ROLE = {"sdm630": METER, "sdm120": METER, "dtsu666": METER, "dtsd1352": METER,
        "seplos_v3": BMS, "sunspec_pcs": PCS, "sungrow_sh": PCS, "sunspec_pv": PVINV,
        "seplos_v3_bank": ("soc_cpct", "v_cv", "i_ca", "ccl_ca", "dcl_ca", "t_max_cdc")}
SUFFIX_UNIT = {"w": "W", "wh": "Wh", "dv": "0.1V", "cv": "0.01V", "mv": "mV", "ma": "mA", "ca": "0.01A",
               "chz": "0.01Hz", "milli": "0.001", "cpct": "0.01%", "dc": "0.1degC", "cdc": "0.01degC",
               "cah": "0.01Ah",
               "s": "s", "var": "var"}


def words(hexstr):
    b = bytes.fromhex(hexstr)
    return [(b[i] << 8) | b[i + 1] for i in range(0, len(b), 2)]


def test_all_maps_load_with_canonical_points_and_units():
    for name in MAPS:
        m = r.load(name, doc=True)
        assert m.name == name and m.source
        for pn in ROLE[name]:
            assert pn in m.points, (name, pn)
        for pn, p in m.points.items():
            suf = pn.rsplit("_", 1)[-1] if "_" in pn else ""
            want = SUFFIX_UNIT.get(suf, "")
            assert p.get("unit", "") == want, (name, pn, p.get("unit"), want)


def test_point_names_are_kept_as_written():
    # names are interned on MicroPython (RAM): the same text, found with any equal str
    for s in ("p_w", "a-b c", "", "zz_not_in_the_code_%d" % 7):
        assert r._intern(s) == s
    import json
    with open(r.MAPS_DIR + "/seplos_v3.json") as f:
        names = sorted(json.load(f)["points"])
    m = r.load("seplos_v3")
    assert sorted(m.points) == names
    for n in names:
        assert "".join([c for c in n]) in m.points
    assert sorted([pn for t in m._idx for pn in m._idx[t]]) == names


def test_plan_is_minimal_and_bounded():
    m = r.load("sdm630")
    assert r.plan(m) == [(4, 0, 76), (4, 0x156, 2)]
    assert r.plan(m) is r.plan(m)  # computed once
    assert r.plan(m, ["p_w", "e_exp_wh"]) == [(4, 0x34, 24)]
    assert r.plan(m, ["p_w"]) == [(4, 0x34, 2)]
    # a smaller limit splits, never exceeding it
    for lim in (2, 7, 20, 40):
        pl = r.plan(m, None, lim)
        assert all(q <= lim for _, _, q in pl), pl
        covered = set()
        for fc, a, q in pl:
            covered.update(range(a, a + q))
        for p in m.points.values():
            assert p["addr"] in covered and p["addr"] + 1 in covered
    e = raises(r.RegMapError, r.plan, m, ["p_w", "nope"])
    assert "nope" in str(e)


def test_plan_honours_gaps_and_max_regs():
    doc = {"name": "t", "max_regs": 10, "gaps": [["holding", 5, 6]], "points": {
        "a": {"table": "holding", "addr": 0}, "b": {"table": "holding", "addr": 4},
        "c": {"table": "holding", "addr": 7, "type": "u32"}, "d": {"table": "holding", "addr": 16},
        "e": {"table": "holding", "addr": 20}, "f": {"table": "input", "addr": 20},
        "g": {"table": "coil", "addr": 3}, "h": {"table": "coil", "addr": 300}}}
    m = r.build(doc)
    assert r.plan(m) == [(1, 3, 298), (4, 20, 1), (3, 0, 5), (3, 7, 10), (3, 20, 1)]
    doc["points"]["x"] = {"table": "holding", "addr": 6}
    e = raises(r.RegMapError, r.build, doc)
    assert "x" in str(e) and "gap" in str(e)


def test_seplos_capture_block():
    # real 0x1000 response from ../shared/reference/traces (slave 1, 17 registers)
    m = r.load("seplos_v3")
    v = r.decode(m, 4, 0x1000, words(
        "14CDFF776B4080E8012203400" "3E7000A0CFF0B7F0D000CFF0B810B7E000000B400B4"))
    assert v["v_cv"] == 5325 and v["i_ca"] == -137 and v["soc_cpct"] == 8320
    assert v["soh_cpct"] == 9990 and v["cycles"] == 10
    assert v["ccl_ca"] == 18000 and v["dcl_ca"] == 18000
    assert v["cell_max_mv"] == 3328 and v["cell_min_mv"] == 3327
    # 0.1 K with 0 degC = 2731.5: 2945 -> 21.35 degC, 2942 -> 21.05 degC, exactly
    assert v["t_max_cdc"] == 2135 and v["t_min_cdc"] == 2105 and v["t_avg_cdc"] == 2115


def test_seplos_pib_cells_and_temperatures():
    # real 0x1100 response (slave 1, 26 registers) from the SG16S200A capture
    m = r.load("seplos_v3")
    v = r.decode(m, 4, 0x1100, words(
        "0CFF0CFF0D000D000D000CFF0D000CFF0D000D000D000D000D000CFF0CFF0D00"
        "0B820B7F0B810B7E0AAB0AAB0AAB0AAB0B8C0B7F"))
    assert [v["cell%d_mv" % i] for i in range(1, 17)] == [
        3327, 3327, 3328, 3328, 3328, 3327, 3328, 3327, 3328, 3328, 3328, 3328, 3328, 3327,
        3327, 3328]
    assert [v["t_cell%d_cdc" % i] for i in range(1, 5)] == [2145, 2115, 2135, 2105]
    assert v["t_env_cdc"] == 2245 and v["t_mos_cdc"] == 2115
    assert (4, 0x1100, 26) in r.plan(m)
    # below 0 degC the sign is exact too: raw 2731 is -0.05 degC, 2721 is -1.05 degC
    assert r.decode(m, 4, 0x1110, [2731, 2721, 2732, 0])["t_cell2_cdc"] == -105
    assert r.decode(m, 4, 0x1110, [2731, 2721, 2732, 0])["t_cell1_cdc"] == -5


def test_seplos_bank_eia_block():
    # real address-0 response (EIA 0x2000, 26 registers, 32-bit values low word first)
    m = r.load("seplos_v3_bank")
    v = r.decode(m, 4, 0x2000, words(
        "14CD0000FFF3FFFF6B40000080E800000122000080E8000000010000000000000708000007080000"
        "024001D00001000A034003E7"))
    assert v["v_cv"] == 5325 and v["i_ca"] == -130 and v["soc_cpct"] == 8320
    assert v["soh_cpct"] == 9990 and v["ccl_ca"] == 18000 and v["dcl_ca"] == 18000
    assert v["cap_full_cah"] == 33000 and v["packs"] == 1 and v["cycles"] == 10
    assert r.plan(m) == [(1, 0x2200, 80), (4, 0x2000, 26), (4, 0x2100, 22)]


def test_seplos_alarm_and_protect_bits():
    m = r.load("seplos_v3", doc=True)
    bits = [0] * 144
    assert r.decode(m, 1, 0x1200, bits)["alarm"] == 0
    bits[0x1248 - 0x1200 + 2] = 1  # TB02 bit2 cell low-voltage alarm
    bits[0x1288 - 0x1200 + 7] = 1  # TB15 bit7 aerosol
    v = r.decode(m, 1, 0x1200, bits)
    assert r.bit_names(m, "alarm", v["alarm"]) == ["cell_lv"]
    assert r.bit_names(m, "protect", v["protect"]) == ["aerosol"]
    assert v["hw_fault"] == 0x80
    t, a, b = r.encode_point(m, "protect", v["protect"])
    assert t == "coil" and a == 0x1248 and b[0x1288 - 0x1248 + 7] == 1 and sum(b) == 1
    # a partial read decodes only the points fully inside
    assert "protect" not in r.decode(m, 1, 0x1200, bits[:0x50])


def test_f32_exact_integer_conversion():
    # 230.1 V as float32 (0x43661999) -> 2301 dV; -1234.5 W -> -1235 (half away from zero)
    assert r.f32_to_scaled(0x4366, 0x1999, 10) == 2301
    hi, lo = r.scaled_to_f32(-12345, 10)
    assert (hi, lo) == (0xC49A, 0x5000)
    assert r.f32_to_scaled(hi, lo) == -1235
    assert r.f32_to_scaled(0x7FC0, 0) is None and r.f32_to_scaled(0xFF80, 0) is None
    assert r.f32_to_scaled(0x8000, 0) == 0 and r.f32_to_scaled(0x0000, 1) == 0
    assert r.scaled_to_f32(1, 3) == (0x3EAA, 0xAAAB)  # round to nearest
    assert r.scaled_to_f32(16777217) == (0x4B80, 0x0000)  # tie -> even


def test_f32_same_ints_on_both_runtimes():
    # the same 3000 pseudo-random bit patterns must give the same checksum everywhere
    rnd = Rand(99)
    acc = 0
    for i in range(3000):
        hi = rnd.next() & 0xFFFF
        lo = rnd.next() & 0xFFFF
        e = (hi >> 7) & 0xFF
        if e > 160 or e < 90:  # keep to magnitudes a meter reports
            hi = (hi & 0x807F) | ((110 + e % 40) << 7)
        v = r.f32_to_scaled(hi, lo, 1000, 3)
        acc = (acc * 31 + v) % 1000000007
        h2, l2 = r.scaled_to_f32(v * 3, 1000)
        assert abs(r.f32_to_scaled(h2, l2, 1000, 3) - v) <= 1
    assert acc == F32_CHECKSUM, acc


F32_CHECKSUM = 855404141


def test_f32_matches_exact_rationals():
    if MICROPYTHON:  # needs fractions (CPython only); _helpers.cpython_only fails on MicroPython
        return
    import struct
    from fractions import Fraction
    rnd = Rand(7)
    for i in range(2000):
        hi = rnd.next() & 0xFFFF
        lo = rnd.next() & 0xFFFF
        f = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
        if f != f or abs(f) > 1e12:
            continue
        q = Fraction(f) * 1000 / 7
        want = int(abs(q) + Fraction(1, 2)) * (1 if q >= 0 else -1)
        assert r.f32_to_scaled(hi, lo, 1000, 7) == want
        # and back: the nearest float32, as struct rounds it
        num = 10 ** 6 * (rnd.next() % 100000) - 5 * 10 ** 10
        h2, l2 = r.scaled_to_f32(num, 1000)
        assert struct.pack(">HH", h2, l2) == struct.pack(">f", Fraction(num, 1000))


def test_encode_point_decode_roundtrip_all_maps():
    for name in MAPS:
        m = r.load(name)
        for pn, p in m.points.items():
            for v in (0, 1, 7, 230, 1000):
                if "values" in p and v not in [e[0] for e in p["values"]]:
                    continue
                if "pick" in p and v >> len(p["pick"]):
                    continue
                if p["type"] in ("u16", "u32", "bits") or p["table"] in ("coil", "discrete"):
                    if v > p.get("max", v):
                        continue
                if "sf" in p:
                    continue  # scaled by another register of the read: test_sunspec_sf
                if p["type"] != "f32" and ((v - p.get("offset", 0)) * p.get("div", 1)) % abs(p.get("mul", 1)):
                    continue  # not a multiple of the register's resolution
                try:
                    t, a, regs = r.encode_point(m, pn, v)
                except r.RegMapError:
                    assert p["type"] in ("bit", "bits") or p.get("offset"), (name, pn, v)
                    continue
                got = r.decode(m, r.READ_FC[t], a, regs)
                assert got[pn] == v, (name, pn, v, regs, got)


def test_encode_write_bounds_and_access():
    m = r.load("sunspec_pcs")
    assert r.encode_write(m, "p_set_w", -5000) == [(16, 40011, [0xFFFF, 0xEC78])]
    assert r.encode_write(m, "run", 1) == [(16, 40010, [1])]
    e = raises(r.RegMapError, r.encode_write, m, "p_set_w", 100001)
    assert "p_set_w" in str(e) and "100001" in str(e) and e.code == 3
    e = raises(r.RegMapError, r.encode_write, m, "p_w", 1)
    assert "read-only" in str(e) and e.code == 2
    raises(r.RegMapError, r.encode_write, m, "nope", 1)
    raises(r.RegMapError, r.encode_write, m, "run", 2)
    raises(r.RegMapError, r.encode_write, m, "run", 1.0)


def test_decode_write_simulator_side():
    m = r.load("sunspec_pcs")
    for name, v in (("p_set_w", -5000), ("p_set_w", 77777), ("run", 0), ("rvrt_s", 60)):
        for fc, a, vals in r.encode_write(m, name, v):
            assert r.decode_write(m, fc, a, vals) == {name: v}
    # half of a 32-bit setpoint: completed from the register image, else left out
    assert r.decode_write(m, 6, 40012, [0xEC78]) == {}
    assert r.decode_write(m, 6, 40012, [0xEC78], {40011: 0xFFFF}) == {"p_set_w": -5000}
    e = raises(r.RegMapError, r.decode_write, m, 16, 40000, [0, 0])
    assert e.code == 2 and "read-only" in str(e)
    e = raises(r.RegMapError, r.decode_write, m, 16, 40011, [2, 0])
    assert e.code == 3 and "131072" in str(e)
    e = raises(r.RegMapError, r.decode_write, m, 6, 40020, [1])
    assert e.code == 2 and "40020" in str(e)


def test_load_errors_name_the_problem():
    e = raises(r.RegMapError, r.load, "no_such_map")
    assert "no_such_map" in str(e)
    bad = [
        ({"name": "b", "points": {"p": {"table": "holdings", "addr": 1}}}, "table"),
        ({"name": "b", "points": {"p": {"table": "holding"}}}, "addr"),
        ({"name": "b", "points": {"p": {"table": "holding", "addr": 1, "type": "f64"}}}, "f64"),
        ({"name": "b", "points": {"p": {"table": "holding", "addr": 1, "access": "rw"}}}, "min"),
        ({"name": "b", "points": {"p": {"table": "holding", "addr": 65535, "type": "u32"}}}, "address"),
        ({"name": "b", "points": {"p": {"table": "coil", "addr": 1, "type": "u16"}}}, "bit"),
        ({"name": "b", "points": {"p": {"table": "holding", "addr": "0xZZ"}}}, "0xZZ"),
        ({"name": "b", "points": {}}, "points"),
    ]
    for doc, word in bad:
        e = raises(r.RegMapError, r.build, doc)
        assert word in str(e) and "b" in str(e), (str(e), word)
    raises(r.RegMapError, r.load, "sdm630", None, {"nope": 1})


def test_params_scale_points():
    m = r.load("sdm630", params={"sign": -1})
    hi, lo = r.scaled_to_f32(1500)
    assert r.decode(m, 4, 0x34, [hi, lo]) == {"p_w": -1500}


def test_sungrow_composite_setpoint():
    m = r.load("sungrow_sh")
    assert r.encode_write(m, "p_set_w", 3000) == [(6, 13049, [2]), (6, 13051, [3000]), (6, 13050, [0xBB])]
    assert r.encode_write(m, "p_set_w", -2500)[1:] == [(6, 13051, [2500]), (6, 13050, [0xAA])]
    assert r.encode_write(m, "p_set_w", 0)[1:] == [(6, 13051, [0]), (6, 13050, [0xCC])]
    raises(r.RegMapError, r.encode_write, m, "p_set_w", 10001)
    # the simulator applies the writes one by one to its register image
    regs = {13049: 0, 13050: 0xCC, 13051: 0}
    seen = {}
    for fc, a, vals in r.encode_write(m, "p_set_w", -2500):
        seen.update(r.decode_write(m, fc, a, vals, regs))
        for i in range(len(vals)):
            regs[a + i] = vals[i]
    assert seen == {"ems_mode": 2, "p_set_w": -2500}
    assert r.decode_write(m, 16, 13050, [0xBB, 1200]) == {"p_set_w": 1200}
    assert r.decode_write(m, 6, 13050, [0xCC]) == {"p_set_w": 0}
    assert r.decode(m, 3, 13049, [2, 0xAA, 700]) == {"ems_mode": 2, "p_set_w": -700}
    assert "p_set_w" not in r.decode(m, 3, 13050, [0x12, 700])  # unknown command word
    # run: 0xCF start / 0xCE stop; state/fault from the system state word
    assert r.encode_write(m, "run", 1) == [(6, 12999, [0xCF])]
    assert r.decode_write(m, 6, 12999, [0xCE]) == {"run": 0}
    raises(r.RegMapError, r.decode_write, m, 6, 12999, [0x11])
    assert r.decode(m, 4, 12999, [0x0100]) == {"state": 256, "fault": 1}
    assert r.decode(m, 4, 12999, [0x0040]) == {"state": 64, "fault": 0}
    # int32 low word first: -3000 W = 0xFFFFF448
    assert r.decode(m, 4, 5213, [0xF448, 0xFFFF]) == {"p_w": -3000}
    assert r.plan(m) == [(4, 5213, 2), (4, 12999, 25), (3, 12999, 1), (3, 13049, 3), (3, 13057, 2),
                         (3, 13073, 1)]  # never across the gaps


def test_dtsu666_energy_address_variant():
    a = r.load("dtsu666")
    b = r.load("dtsu666@v4000")
    c = r.load("dtsu666", variant="v4000")
    assert a.points["e_imp_wh"]["addr"] == 0x101E and a.points["e_exp_wh"]["addr"] == 0x1028
    assert b.points["e_imp_wh"]["addr"] == 0x401E and c.points["e_exp_wh"]["addr"] == 0x4028
    assert r.plan(b)[0] == (3, 0x2006, 0x2046 - 0x2006)
    e = raises(r.RegMapError, r.load, "dtsu666@v9")
    assert "v9" in str(e) and "v4000" in str(e)
    # x0.1 W float: 12345.6 (0.1 W units) -> 1235 W
    hi, lo = r.scaled_to_f32(123456, 10)
    assert r.decode(a, 3, 0x2012, [hi, lo]) == {"p_w": 1235}


def test_dtsd1352_ct_ratio():
    m = r.load("dtsd1352", params={"ct": 40})
    v = r.decode(m, 3, 0x0164, [0xFFFF, 0xFC18, 0, 0, 0, 0, 0, 1000])  # -1000 and 1000 (x0.001 kW)
    assert v["p1_w"] == -40000 and v["p_w"] == 40000
    assert r.decode(m, 3, 0x0064, [123]) == {"i1_ma": 49200}  # 1.23 A secondary x 40
    assert r.decode(r.load("dtsd1352"), 3, 0x000A, [0, 12345]) == {"e_imp_wh": 123450}


def test_encode_point_keeps_bits_other_points_own():
    m = r.load("seplos_v3")
    img = {}
    for pn, v in (("alarm", 0b101), ("protect", 1 << 27), ("hw_fault", 0x80)):
        t, a, bits = r.encode_point(m, pn, v, img)
        for i in range(len(bits)):
            img[a + i] = bits[i]
    data = [img.get(0x1200 + i, 0) for i in range(144)]
    v = r.decode(m, 1, 0x1200, data)
    assert v["alarm"] == 0b101 and v["protect"] == 1 << 27 and v["hw_fault"] == 0x80
    # register bitfields: only the picked bits change
    m2 = r.build({"name": "t", "points": {
        "lo": {"table": "holding", "addr": 0, "type": "u32", "pick": [0, 17]},
        "hi": {"table": "holding", "addr": 0, "type": "u32", "pick": [1, 31]}}})
    t, a, w = r.encode_point(m2, "lo", 3, {0: 0x8000, 1: 0x0002})
    assert w == [0x8002, 0x0003]
    assert r.decode(m2, 3, 0, w) == {"lo": 3, "hi": 3}
