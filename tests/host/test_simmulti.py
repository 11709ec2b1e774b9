"""The simulated multi-unit plant (edgegw.simmulti): packs answering at their own Seplos
addresses on one bus, each PCS inside its rating and its packs' limits, DC energy shared
by capacity; `edgegw sil --config` with several bms/pcs runs it."""
from edgegw import cmd_config
from edgegw.cmd_sil import make_site
from edgegw.simdev import SimDevice
from edgegw.simmulti import PACK_V, MultiSite, is_multi, plan
from protocols import modbus_rtu as rtu
from protocols import regmap


def _site(**kw):
    cfg = cmd_config.template("multi-pack")
    packs, pcs = plan(cfg)
    return cfg, MultiSite(packs, pcs, soc_cpct=5000, pv=0, it=9000, aux=0, max_a=60, **kw)


def test_plan_from_the_template():
    cfg = cmd_config.template("multi-pack")
    assert is_multi(cfg) and not is_multi(cmd_config.template("two-bus"))
    packs, pcs = plan(cfg)
    assert packs == [("b1", 10240, "pcs1"), ("b2", 10240, "pcs1"), ("b3", 5120, "pcs2")]
    assert pcs == [("pcs1", 5000), ("pcs2", 3000)]


def test_each_pcs_inside_its_rating_and_packs_energy_by_capacity():
    _, s = _site()
    s.write("pcs", {"p_set_w": 6000, "run": 1}, "pcs1")
    s.write("pcs", {"p_set_w": 6000, "run": 1}, "pcs2")
    for _ in range(100):
        s.step(0.1)
    assert s.summary()["pcs"]["pcs1"]["bat_w"] == 5000       # its rating
    # pcs2: b3's 60 A x 51.2 V x eta_d binds under the 3000 W rating
    assert s.summary()["pcs"]["pcs2"]["bat_w"] == int(round(60 * PACK_V * 0.95))
    assert s.p_set_w == 12000 and s.run == 1 and s.bat_w == s.pcs[0].bat_w + s.pcs[1].bat_w
    b1, b2 = s.pack("b1"), s.pack("b2")
    assert b1.dc_w == b2.dc_w > 0 and b1.e_wh == b2.e_wh < 5120
    assert s.grid_w == 9000 - s.bat_w
    # a protected pack takes nothing; the other pack of its PCS carries it all
    b2.protect = 1
    s.step(1.0)
    assert b2.dc_w == 0 and b1.dc_w > 0 and s.points("bms", "b2")["dcl_ca"] == 0


def test_packs_answer_at_their_own_address():
    cfg, s = _site()
    s.pack("b3").alarm = 1 << 2
    for d in cfg["devices"]:
        if d["role"] != "bms":
            continue
        dev = SimDevice(d["map"], d["slave"], "bms", site=s, name=d["name"])
        m = dev.map
        p = m.points["soc_cpct"]
        req = rtu.decode_request(rtu.encode_request(d["slave"], 4, p["addr"], 1))
        rsp = rtu.decode_response(dev.handle(req), req)
        assert rsp.slave == d["slave"]
        assert regmap.decode(m, 4, p["addr"], rsp.values)["soc_cpct"] == 5000
        assert dev.shown()["alarm"] == (4 if d["name"] == "b3" else 0)


def test_sil_builds_the_plant_for_a_multi_unit_config():
    cfg = cmd_config.template("multi-pack")
    s = make_site({"start_h": 12, "pv": 1000, "it": 3000, "soc_init_cpct": 6000,
                   "battery_wh": 999, "max_discharge_a": 80}, cfg)
    assert isinstance(s, MultiSite) and s.soc_cpct == 6000 and s.cap_wh == 25600
    assert [k.max_a for k in s.packs] == [80, 80, 80]
    assert not isinstance(make_site({"start_h": 12}, cmd_config.template("two-bus")), MultiSite)
