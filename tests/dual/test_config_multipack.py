# Config of several battery packs and PCS (docs/config.md "Several packs and PCS").
from edgefw import config


def _cfg(packs, pcs, trip=None):
    devs = []
    for i in range(len(pcs)):
        devs.append(dict({"name": "pcs%d" % (i + 1), "role": "pcs", "map": "sunspec_pcs",
                          "slave": 10 + i}, **pcs[i]))
    for i in range(len(packs)):
        devs.append(dict({"name": "bms%d" % (i + 1), "role": "bms", "map": "seplos_v3",
                          "slave": 1 + i}, **packs[i]))
    c = {"buses": [{"name": "bus0", "port": "/dev/null"}], "devices": devs}
    if trip is not None:
        c["limits"] = {"pack_trip": trip}
    return c


def test_several_packs_and_pcs_valid():
    c = _cfg([{"pcs": "pcs1", "capacity_wh": 10000}, {"pcs": "pcs1", "capacity_wh": 5000},
              {"pcs": "pcs2", "capacity_wh": 5000}],
             [{"rating_w": 10000}, {"rating_w": 5000}], "pcs")
    assert config.validate(c) == []
    assert c["limits"]["pack_trip"] == "pcs"


def test_one_pack_one_pcs_unchanged():
    c = _cfg([{}], [{}])
    assert config.validate(c) == []
    assert c["limits"]["pack_trip"] == "site"
    assert "capacity_wh" not in c["devices"][1] and "rating_w" not in c["devices"][0]


def test_errors_name_the_field():
    e = config.validate(_cfg([{"pcs": "nope"}], [{}]))
    assert len(e) == 1 and e[0].startswith("devices[1].pcs: 'nope' is not a pcs device"), e
    e = config.validate(_cfg([{"capacity_wh": 100}, {}], [{}]))
    assert len(e) == 1 and e[0].startswith("devices[2].capacity_wh: missing"), e
    e = config.validate(_cfg([{}, {}], [{}, {}], "pcs"))
    assert e and e[0].startswith("devices[2].pcs: missing"), e
    e = config.validate(_cfg([{}], [{}], "both"))
    assert e == ["limits.pack_trip: 'both' is not one of site, pcs"], e
    e = config.validate(_cfg([{"capacity_wh": 0}], [{"rating_w": "x"}]))
    assert "devices[1].capacity_wh: 0 out of range 1..10000000" in e, e
    assert "devices[0].rating_w: 'x' is not an integer" in e, e
    e = config.validate(_cfg([{"capacity_wh": 6000000}, {"capacity_wh": 6000000}], [{}]))
    assert e == ["devices: capacity_wh adds up to 12000000, at most 10000000"], e
    e = config.validate(_cfg([{}], [{}, {}]))
    assert e == [], e  # the packs share the PCS (one DC bus): fine with pack_trip site
    e = config.validate(_cfg([{"pcs": "pcs1"}, {}], [{}, {}]))
    assert e and e[0].startswith("devices[3].pcs: missing: with several PCS"), e


def test_validate_never_raises_on_odd_values():
    for bad in ([], 5, None, {"x": 1}):
        c = _cfg([{"pcs": bad}], [{"rating_w": bad}])
        e = config.validate(c)
        assert isinstance(e, list)
