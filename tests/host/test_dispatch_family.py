"""The generated scenario family (scenarios/family.py) through the evaluation bench: shapes,
energy not served in outages, that the fallback is never handed the realised future, and
determinism by seed. One-day variants of three family members keep it fast."""
import importlib.util
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from edgegw import evalbench
from edgegw.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.filterwarnings("ignore:.*dayofyear")   # pvlib on a newer pandas


def _family():
    spec = importlib.util.spec_from_file_location(
        "family_t", os.path.join(REPO, "scenarios", "family.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


FAM = _family()
# 3: snow, batch queue, 3 h battery, outage (every i % 10 == 3 has one); 6: dust, inference
# (unannounced spikes); 13: snow, batch + heat pump, outage
PICK = (3, 6, 13)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    d = tmp_path_factory.mktemp("fam")
    meta = FAM.generate(str(d), n=40, days=1, seed=7, only=PICK)
    return d, meta


def _path(d, meta, kind):
    return [str(d / (k + ".csv")) for k in sorted(meta) if kind in k]


def test_family_shapes_and_ens(fam):
    d, meta = fam
    assert len(meta) == 3
    outage = [k for k in sorted(meta) if meta[k]["outages"]]
    assert len(outage) == 2, meta
    for name in sorted(meta):
        res = evalbench.evaluate(str(d / (name + ".csv")))
        pol = res["policies"]
        assert list(pol) == ["a", "b", "r", "d"], list(pol)      # no schedule: no (c)
        assert res["steps"] == 1440 and res["forecast"] == "tracker"
        for m in pol.values():
            assert m["export_violations"] == 0 and m["limit_violations"] == 0
            assert m["ens_wh"] >= 0 and m["throughput_kwh"] >= 0
        if name in outage:
            assert res["outage_min"] > 0
            assert pol["a"]["ens_wh"] > 0, pol["a"]      # no battery, grid down: not served
            for k, m in pol.items():
                assert pol["d"]["ens_wh"] <= m["ens_wh"] + 1.0, (name, k, m["ens_wh"])
        else:
            assert all(m["ens_wh"] == 0 for m in pol.values())


def test_lp_ens_below_every_policy_small_battery():
    # 2 h outage at night, 1 kWh battery at 50 %, 5 kW IT: whatever the policy, most of
    # the IT load goes unserved; the LP keeps its battery for the outage (min ENS first)
    n = 360
    ok = np.ones(n, dtype=np.int64)
    ok[200:320] = 0
    sc = {"t_s": np.arange(n) * 60, "pv_w": np.zeros(n, dtype=int),
          "it_w": np.full(n, 5000), "aux_w": np.full(n, 1000), "grid_ok": ok, "jobs": []}
    from edgefw import dispatch
    p = dispatch.validate_params({"battery_wh": 1000, "pcs_w": 5000, "grid_cap_w": 5500,
                                  "soc_init_cpct": 5000, "reserve_s": 0})
    a = evalbench.metrics(evalbench.run_no_battery(sc, p), p)
    b = evalbench.metrics(evalbench.run_firmware(sc, p), p)
    sp, curt, _ = evalbench.lp_optimum(sc, p)
    d = evalbench.metrics(evalbench.run_setpoints(sc, p, sp, curt), p)
    assert abs(a["ens_wh"] - 10000.0) < 1, a             # 2 h x 5 kW
    assert d["ens_wh"] <= b["ens_wh"] + 0.5 and d["ens_wh"] < a["ens_wh"] - 300, (b, d)
    # ENS ranks above the peak: the LP fills the battery before the outage and refills
    # it after (E[T] >= E[0]) at a little above the 6 kW load
    assert a["peak_import_w"] == 6000 and 6000 < d["peak_import_w"] < 7000, d


def test_fallback_never_gets_the_realised_spike(fam):
    # an inference member (no queue file: the tracker's base estimate only) and the same
    # scenario with an unannounced 20 min spike at 14:00: every forecast handed to (b)
    # before 14:00 is the same in both, so none contains the spike; the old realised-load
    # forecast (the cheat) does show it ahead
    d, meta = fam
    (path,) = _path(d, meta, "inference")
    sc, p = evalbench.load_scenario(path)
    assert sc["jobs"] == [] and meta[os.path.basename(path)[:-4]]["spikes"]
    s0, s1 = 14 * 60, 14 * 60 + 20
    w = int(sc["it_w"].max()) // 2
    spiked = dict(sc, it_w=sc["it_w"].copy())
    spiked["it_w"][s0:s1] += w
    got = {}
    for mode in ("tracker", "realised"):
        for k, s in (("plain", sc), ("spike", spiked)):
            sent = []
            evalbench.run_firmware(s, p, forecast=mode, sent=sent)
            got[mode, k] = [f for t, f in sent if t < s0 * 60]
    assert got["tracker", "plain"] and got["tracker", "plain"] == got["tracker", "spike"]
    assert got["realised", "plain"] != got["realised", "spike"]
    real = float(spiked["it_w"][s0:s1].mean())
    for t0, step, load, exp in got["tracker", "spike"]:
        for k, v in enumerate(load):
            if t0 + k * step < s1 * 60 and t0 + (k + 1) * step > s0 * 60:
                assert v < real - w / 2, (t0, k, v, real)


def test_queue_jobs_show_only_once_known(tmp_path):
    # a 30 kW job at 03:00 that the queue learns of at 02:00: no forecast before 02:00 has
    # it, the ones after do (the tracker's own queue forecast)
    n = 300
    with open(tmp_path / "q.csv", "w") as f:
        f.write("t_s,pv_w,it_load_w,aux_load_w\n")
        for i in range(n):
            f.write("%d,0,%d,1000\n" % (i * 60, 40000 if 180 <= i < 240 else 10000))
    (tmp_path / "q.json").write_text(json.dumps({"battery_wh": 20000, "pcs_w": 20000}))
    (tmp_path / "q.queue.json").write_text(json.dumps({"jobs": [
        {"id": "train", "start": 10800, "duration_s": 3600, "power_w": 30000,
         "known_s": 7200}]}))
    sc, p = evalbench.load_scenario(str(tmp_path / "q.csv"))
    assert len(sc["jobs"]) == 1 and sc["jobs"][0][0] == 7200
    sent = []
    evalbench.run_firmware(sc, p, sent=sent)
    for _, (t0, step, load, exp) in sent:
        k = (10800 - t0) // step
        if t0 + step <= 7200 and 0 <= k < len(load):
            assert load[k] < 20000, (t0, load[k])
        if 7200 <= t0 < 10800 - step and 0 <= k < len(load):
            assert load[k] >= 39000, (t0, load[k])
    none = []
    evalbench.run_firmware(sc, p, forecast="none", sent=none)
    assert none == []


def test_family_deterministic_by_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    FAM.generate(str(a), n=40, days=1, seed=3, only=(6, 13))
    FAM.generate(str(b), n=40, days=1, seed=3, only=(6, 13))
    FAM.generate(str(c), n=40, days=1, seed=4, only=(6, 13))
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) and len(names) >= 5
    for f in names:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert any(not (c / f).exists() or (a / f).read_bytes() != (c / f).read_bytes()
               for f in names)
    assert len(FAM.specs(40, 7, 1)) == 40
    kinds = {(s["climate"], s["load"]) for s in FAM.specs(40, 7, 1)}
    assert len(kinds) == 20
    assert sum(1 for s in FAM.specs(40, 7, 1) if s["outages"]) >= 4


def test_learning_lead_in_is_the_days_before_and_only_the_gateway_sees_it(tmp_path):
    # --lead: the week's files are those without it (same draws); NAME.lead.csv is other
    # days (its own weather and load) on the same site; only (b)'s learnt profiles start
    # from it (evaluate(lead_path=...)): no and LP policies are unchanged
    a, b = tmp_path / "a", tmp_path / "b"
    FAM.generate(str(a), n=40, days=1, seed=7, only=(6,))
    FAM.generate(str(b), n=40, days=1, seed=7, only=(6,), lead=2)
    (name,) = [f[:-4] for f in os.listdir(a) if f.endswith(".csv")]
    for f in os.listdir(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    week = evalbench._read_csv(str(b / (name + ".csv")))
    lead = evalbench._read_csv(str(b / (name + ".lead.csv")))
    assert len(lead["t_s"]) == 2 * 1440 and not (lead["it_w"][:1440] == week["it_w"]).all()
    p = evalbench.load_scenario(str(b / (name + ".csv")))[1]
    st = evalbench.lead_in_learnt(str(b / (name + ".lead.csv")), p)
    assert all(st["seen"]) and max(st["pv"]) > 0
    r0 = evalbench.evaluate(str(b / (name + ".csv")), reference=False, lp_block_min=15)
    r1 = evalbench.evaluate(str(b / (name + ".csv")), reference=False, lp_block_min=15,
                            lead_path=str(b / (name + ".lead.csv")))
    assert r1["lead_in"] and not r0["lead_in"]
    for k in ("a", "d"):
        assert r0["policies"][k] == r1["policies"][k], k
    assert r0["policies"]["b"] != r1["policies"]["b"]


def test_cli_outage_and_queue_errors(tmp_path):
    bad = tmp_path / "s.csv"
    (tmp_path / "s.json").write_text("{}")
    bad.write_text("t_s,pv_w,it_load_w,aux_load_w,grid_ok\n0,0,1000,0,1\n60,0,1000,0,2\n")
    r = CliRunner().invoke(cli, ["dispatch", "eval", str(bad)])
    assert r.exit_code == 2 and "line 3" in r.output and "grid_ok" in r.output, r.output
    bad.write_text("t_s,pv_w,it_load_w,aux_load_w,grid_ok\n0,0,1000,0,1\n60,0,1000,0,0\n")
    (tmp_path / "s.queue.json").write_text('{"jobs": [{"id": "x", "duration_s": 60, "power_w": 5}]}')
    r = CliRunner().invoke(cli, ["dispatch", "eval", str(bad)])
    assert r.exit_code == 2 and "s.queue.json" in r.output and "start" in r.output, r.output
    r = CliRunner().invoke(cli, ["dispatch", "eval", str(bad), "--queue",
                                 str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "--queue" in r.output, r.output
    (tmp_path / "s.queue.json").unlink()
    r = CliRunner().invoke(cli, ["dispatch", "eval", str(bad), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["outage_min"] == 1 and res["policies"]["a"]["ens_wh"] > 0
