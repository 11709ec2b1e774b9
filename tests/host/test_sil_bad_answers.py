"""Issue 14.1 on the real firmware (micropython over ptys, host/edgegw/vgw.py): a device
that answers every request with an exception code 0 (`SS 8x 00 CRC`) or other well-framed
garbage counts errors for itself and goes stale; the bus is never marked down and its
neighbours on the same bus stay fresh. (Before: the bus loop raised TypeError, the bus was
reopened every second and every device on it went stale.)"""
import pytest

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config
from protocols import modbus_rtu as rtu

SPEED = 10

BAD = (lambda s, fc: rtu.add_crc(bytes((s, fc | 0x80, 0))),          # exception code 0
       lambda s, fc: rtu.add_crc(bytes((s, fc, 0))),                 # empty read answer
       lambda s, fc: rtu.add_crc(bytes((s, fc, 3, 1, 2, 3))))        # odd byte count


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    cfg = site_config(control={"mode": "hold", "hold_w": 800}, safety={"clean_s": 2})
    site = SimSite(pv=3000, it=2200, aux=400, soc_cpct=6000)
    with VirtualGateway(str(tmp_path_factory.mktemp("vgw")), cfg, site, speed=SPEED) as g:
        g.wait(lambda s: all(b[d]["polls"] >= 2 for b in s["buses"].values()
                             for d in b if not d.startswith("_")), 20, points=False)
        yield g


@pytest.mark.parametrize("k", range(len(BAD)))
def test_garbage_answers_cost_only_their_device(gw, k):
    pv = gw.devices["pv"]
    good = pv.handle
    n = [0]

    def bad(req):
        good(req)   # keep its request count
        n[0] += 1
        return BAD[k](pv.slave, req.fc)
    s0 = gw.status(points=False)
    others = [d for d in s0["buses"]["bus0"] if not d.startswith("_") and d != "pv"]
    ok0 = {d: s0["buses"]["bus0"][d]["ok"] for d in others}
    pv.handle = bad
    try:
        s = gw.wait(lambda s: s["buses"]["bus0"]["pv"]["stale"], 20, interval=0.1,
                    points=False)
        s = gw.wait(lambda s: all(s["buses"]["bus0"][d]["ok"] >= ok0[d] + 3 for d in others),
                    20, points=False)
        b = s["buses"]["bus0"]
        assert n[0] >= 3 and b["pv"]["crc"] - s0["buses"]["bus0"]["pv"]["crc"] >= 3
        assert b["_errors"] == 0 and not b["_down"] and s["nerr"] == 0, s["errors"]
        assert not any(b[d]["stale"] for d in others)
    finally:
        pv.handle = good
    gw.wait(lambda s: not s["buses"]["bus0"]["pv"]["stale"], 40, points=False)
