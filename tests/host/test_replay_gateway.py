"""Capture -> trace file -> replay against the real firmware: the BMS bus of one virtual
gateway is recorded (what a technician's USB-RS485 capture would hold), then a second
gateway, whose BMS bus is served only by the replayer on a pty, must decode the very same
values; with 10 % corrupted CRCs it counts the errors and still decodes them."""
import io

import pytest

from edgegw.replayer import Faults, Replayer
from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config
from protocols import trace

SPEED = 10
BMS_POINTS = ("soc_cpct", "soh_cpct", "v_cv", "i_ca", "cell_max_mv", "cell_min_mv", "ccl_ca",
              "dcl_ca")


def _bms_polls(s):
    return s["buses"]["bus1"]["bms"]["polls"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trace of bus1 (the BMS) and the values the gateway decoded while it was taken."""
    cfg = site_config(control={"mode": "hold", "hold_w": 0})
    site = SimSite(pv=2000, it=1800, aux=300, soc_cpct=7345)
    site.freeze()  # values hold still: every recorded response carries the same numbers
    with VirtualGateway(str(tmp_path_factory.mktemp("rec")), cfg, site, speed=SPEED) as gw:
        gw.wait(lambda s: _bms_polls(s) >= 4, 30, points=False)
        pts = gw.status()["site"]["points"]["bms"]
        frames = list(gw.buses["bus1"].trace)
    buf = io.StringIO()
    w = trace.Writer(buf, {"baud": 19200, "source": "vgw bus1"})
    t0 = frames[0][0]
    for t, d, data in frames:
        w.frame(int((t - t0) * 1e6), "bus1", d, data)
    path = tmp_path_factory.mktemp("trace") / "bus1.jsonl"
    path.write_text(buf.getvalue())
    return str(path), {k: pts[k][0] for k in BMS_POINTS if k in pts}


def _replay_into_gateway(tmp, trace_path, faults=None, polls=4):
    header, recs = trace.read(trace_path)
    recs = list(recs)
    cfg = site_config(control={"mode": "hold", "hold_w": 0})
    with VirtualGateway(str(tmp), cfg, SimSite(), speed=SPEED, external=("bus1",)) as gw:
        with Replayer(recs, baud=header["baud"], faults=faults) as rp:
            rp.start(gw.external_ports["bus1"])
            s = gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] >= polls, 40)
            stats = dict(rp.stats)
        return s, stats


def test_trace_has_both_directions(recorded):
    path, values = recorded
    header, recs = trace.read(path)
    dirs = [r["dir"] for r in recs]
    assert dirs.count("req") >= 4 and dirs.count("rsp") >= 4
    assert abs(values["soc_cpct"] - 7345) <= 10  # the BMS reports 0.1 % steps


def test_replayed_bms_decodes_to_the_recorded_values(recorded, tmp_path):
    path, values = recorded
    s, stats = _replay_into_gateway(tmp_path, path)
    got = s["site"]["points"]["bms"]
    for k, v in values.items():
        assert got[k][0] == v, (k, got[k], v)
    assert stats["answered"] >= 4 and stats["unknown"] == 0


def test_replay_with_corrupted_crc_is_counted_and_discarded(recorded, tmp_path):
    path, values = recorded
    s, stats = _replay_into_gateway(tmp_path, path, Faults(corrupt_crc=0.3, seed=7), polls=6)
    bms = s["buses"]["bus1"]["bms"]
    assert stats["corrupted"] >= 1
    assert bms["crc"] >= 1  # counted by the gateway
    got = s["site"]["points"]["bms"]
    for k, v in values.items():  # and never used: the values are still the recorded ones
        assert got[k][0] == v, (k, got[k], v)
