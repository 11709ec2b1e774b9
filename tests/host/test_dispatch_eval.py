"""`edgegw dispatch eval` and the evaluation bench: CLI (CliRunner and a real process),
LP optimum sanity, the seed's sandstorm case, bad input."""
import json
import os
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from edgegw import evalbench
from edgegw.cli import cli

# (not `from conftest import`: with tests/dual collected too, that name can be the other one)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
SCEN = os.path.join(REPO, "scenarios")


def scen(name):
    return os.path.join(SCEN, name + ".csv")


@pytest.fixture(scope="module")
def sandstorm():
    r = CliRunner().invoke(cli, ["dispatch", "eval", scen("sandstorm"), "--site",
                                 os.path.join(SCEN, "sandstorm.json"), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_eval_json_all_policies(sandstorm):
    pol = sandstorm["policies"]
    # r: the reference, a rolling 24 h LP with a perfect forecast (between b/c and d)
    assert sorted(pol) == ["a", "b", "c", "d", "r"]
    assert sandstorm["forecast"] == "tracker" and sandstorm["jobs"] == 5
    for k in ("b", "c", "r", "d"):
        m = pol[k]
        assert m["export_violations"] == 0 and m["soc_violations"] == 0, (k, m)
        assert m["limit_violations"] == 0 and m["ens_kwh"] == 0.0
        assert m["peak_import_w"] < pol["a"]["peak_import_w"]
    assert pol["r"]["peak_import_w"] >= pol["d"]["peak_import_w"] - 2
    for k in ("b", "c", "r"):
        assert pol[k]["cap_violations"] == 0
        assert pol[k]["peak_reduction_share_pct"] is not None
        assert pol[k]["pv_use_improvement_share_pct"] is not None


def test_seed_sandstorm_job_runs_without_grid_import(sandstorm):
    # the schedule (95 % SOC before the storm, then the job window with aim_w 0) and link
    # loss: the 2 h job is carried by PV + storage with no grid import and no export; the
    # fallback without the schedule (b) keeps the site's 1 kW aim and the cap only
    c = sandstorm["policies"]["c"]
    a = sandstorm["policies"]["a"]
    assert c["job_import_wh"] == 0.0 and c["job_peak_import_w"] == 0, c
    assert c["export_violations"] == 0 and c["export_kwh"] == 0.0, c
    assert a["job_import_wh"] > 100000        # without a battery it is ~150 kWh


def test_eval_text_as_subprocess(tmp_path):
    png = tmp_path / "run.png"
    p = subprocess.run([os.path.join(VENV_BIN, "edgegw"), "dispatch", "eval",
                        scen("load_drop"), "--plot", str(png)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "peak import W" in p.stdout and "d LP optimum" in p.stdout
    assert png.stat().st_size > 10000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_lp_flattens_a_known_case():
    # 2 h at 10 kW then 1 h at 30 kW, lossless, big battery, must end where it started:
    # the optimum imports the average, 50 kWh / 3 h
    n = 180
    sc = {"t_s": np.arange(n) * 60, "pv_w": np.zeros(n, dtype=int),
          "it_w": np.array([10000] * 120 + [30000] * 60), "aux_w": np.zeros(n, dtype=int)}
    from edgefw import dispatch
    p = dispatch.validate_params({"battery_wh": 100000, "soc_init_cpct": 5000,
                                  "pcs_w": 50000, "eta_c_milli": 1000, "eta_d_milli": 1000,
                                  "reserve_s": 0})
    sp, curt, peak = evalbench.lp_optimum(sc, p)
    assert abs(peak - 50000 / 3) < 2, peak
    run = evalbench.run_setpoints(sc, p, sp, curt)
    m = evalbench.metrics(run, p)
    assert m["peak_import_w"] <= 50000 / 3 + 2
    assert abs(run["soc"][-1] - 5000) < 2     # E[T] >= E[0], and no more with losses 0
    assert abs(m["import_kwh"] - 50.0) < 0.05


def test_lp_keeps_the_reserve_where_the_peak_allows():
    # 1 h burst of 30 kW, 1 h of 5 kW, 2 h of 45 kW PV over 5 kW; 40 kWh battery at 75 %,
    # 25 kW PCS, lossless. The burst sets the peak at 5 kW (PCS limit) and leaves 5 kWh. In
    # hour 2 the optimum without a reserve discharges them (import 5 kWh in all); with a
    # 2 h reserve for the IT load (10 kWh at 5 kW) it imports hour 2 instead (10 kWh)
    n = 240
    sc = {"t_s": np.arange(n) * 60, "pv_w": np.array([0] * 120 + [45000] * 120),
          "it_w": np.array([30000] * 60 + [5000] * 180), "aux_w": np.zeros(n, dtype=int)}
    from edgefw import dispatch
    out = {}
    for reserve_s in (0, 7200):
        p = dispatch.validate_params({"battery_wh": 40000, "soc_init_cpct": 7500,
                                      "soc_min_cpct": 0, "soc_max_cpct": 10000,
                                      "pcs_w": 25000, "eta_c_milli": 1000, "eta_d_milli": 1000,
                                      "reserve_s": reserve_s})
        sp, curt, peak = evalbench.lp_optimum(sc, p)
        assert abs(peak - 5000) < 2, (reserve_s, peak)
        out[reserve_s] = evalbench.metrics(evalbench.run_setpoints(sc, p, sp, curt), p)
    assert abs(out[0]["import_kwh"] - 5.0) < 0.05, out[0]
    assert abs(out[7200]["import_kwh"] - 10.0) < 0.05, out[7200]
    assert out[7200]["peak_import_w"] <= 5002


def test_lp_optimum_bounds_every_policy_peak_without_violations():
    sc, p = evalbench.load_scenario(scen("night_burst"))
    res = evalbench.evaluate(scen("night_burst"))
    d = res["policies"]["d"]
    assert d["export_violations"] == 0 and d["soc_violations"] == 0
    assert d["peak_import_w"] <= res["policies"]["a"]["peak_import_w"]
    assert abs(d["peak_import_w"] - res["lp_peak_w"]) <= 2


def _err(args):
    r = CliRunner().invoke(cli, ["dispatch", "eval"] + args)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    return r.output


def test_bad_arguments_clear_messages(tmp_path):
    assert "not found" in _err([str(tmp_path / "nope.csv")])
    assert "--site" in _err([scen("sandstorm"), "--site", str(tmp_path / "x.json")])
    assert "--plot" in _err([scen("sandstorm"), "--plot", str(tmp_path / "x.jpg")])
    bad = tmp_path / "bad.csv"
    bad.write_text("time,pv\n0,1\n")
    (tmp_path / "bad.json").write_text("{}")
    assert "header" in _err([str(bad)])
    bad.write_text("t_s,pv_w,it_load_w,aux_load_w\n0,1,2,3\n60,x,2,3\n")
    out = _err([str(bad)])
    assert "line 3" in out and "pv_w" in out
    bad.write_text("t_s,pv_w,it_load_w,aux_load_w\n0,1,2,3\n60,1,2,3\n")
    (tmp_path / "bad.json").write_text('{"pcs_w": -5}')
    assert "site.pcs_w" in _err([str(bad)])
    (tmp_path / "bad.json").write_text('{"pcs_w": ')
    assert "not valid JSON" in _err([str(bad)])
    # the site and queue files are read by the CLI's one file reader: same messages
    (tmp_path / "bad.json").write_bytes(b'{"pcs_w": "\xff"}')
    assert "not UTF-8" in _err([str(bad)])
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "q.json").write_bytes(b"\xff[]")
    out = _err([str(bad), "--queue", str(tmp_path / "q.json")])
    assert "queue file" in out and "not UTF-8" in out
    p = subprocess.run([os.path.join(VENV_BIN, "edgegw"), "dispatch", "eval", "/nonexistent.csv"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr


def test_set_overrides_a_site_field_hard_cap():
    # a what-if without editing the site file: on clouds the fallback raises the cap for
    # the night (the battery cannot hold 60 kW through it); with grid_cap_hard it keeps
    # the cap: fewer minutes and less energy above it, but the morning surge is unshaved
    def run(*sets):
        args = ["dispatch", "eval", scen("clouds"), "--json"]
        for x in sets:
            args += ["--set", x]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        return json.loads(r.output)
    soft, hard = run(), run("grid_cap_hard=true", "pv_next_milli=1000")
    assert "overrides" not in soft
    assert hard["overrides"] == {"grid_cap_hard": True, "pv_next_milli": 1000}
    soft, hard = soft["policies"]["b"], hard["policies"]["b"]
    assert hard["cap_violations"] < soft["cap_violations"], (hard, soft)
    assert hard["cap_excess_kwh"] < soft["cap_excess_kwh"], (hard, soft)
    # honest forecast (the tracker's, issue 15): soft 108.8 kW, hard 123.3 kW; with the old
    # realised-load forecast soft was 70.0 kW and this margin 20 kW
    assert hard["peak_import_w"] > soft["peak_import_w"] + 10000, (hard, soft)
    assert "site.pv_next_milli" in _err([scen("clouds"), "--set", "pv_next_milli=5000"])
    assert "site.grid_cap_hard" in _err([scen("clouds"), "--set", "grid_cap_hard=1"])
    assert "FIELD=VALUE" in _err([scen("clouds"), "--set", "grid_cap_hard"])
    assert "JSON value" in _err([scen("clouds"), "--set", "pv_next_milli=lots"])


@pytest.mark.filterwarnings("ignore:.*dayofyear")   # pvlib on a newer pandas
def test_holdout_scenarios_generate_and_load(tmp_path):
    # make bench-holdout: 18 scenarios from other seeds, valid for the evaluation bench,
    # none of them a copy of a shipped one
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_t", os.path.join(SCEN, "generate.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.holdout(str(tmp_path))
    names = sorted(f[:-4] for f in os.listdir(tmp_path) if f.endswith(".csv"))
    assert len(names) == 18 and "mix_dcl_11" in names, names
    shipped = {open(scen(n[:-4]), "rb").read() for n in os.listdir(SCEN) if n.endswith(".csv")}
    for n in names:
        sc, p = evalbench.load_scenario(str(tmp_path / (n + ".csv")))
        assert len(sc["t_s"]) in (1440, 4320) and p["grid_cap_w"] == 60000
        assert (tmp_path / (n + ".csv")).read_bytes() not in shipped


@pytest.mark.parametrize("name", sorted(os.path.splitext(f)[0] for f in os.listdir(SCEN)
                                        if f.endswith(".csv")))
def test_no_export_violations_in_any_scenario(name):
    # zero export (review finding 5: the ramp no longer holds discharge up) in every bundled
    # scenario, for the fallback and the schedule + link loss runs
    res = evalbench.evaluate(scen(name))
    for k, m in res["policies"].items():
        assert m["export_violations"] == 0, (name, k, m)


def test_lead_in_teaches_b_and_c_before_the_scored_day(tmp_path):
    # a lead-in of other days (here: a clear summer day) changes what b plans with; the
    # default is SCENARIO.lead.csv beside the scenario; a bad one is one error line
    def run(*extra):
        r = CliRunner().invoke(cli, ["dispatch", "eval", scen("sandstorm"), "--site",
                                     os.path.join(SCEN, "sandstorm.json"), "--json",
                                     "--no-reference"] + list(extra))
        assert r.exit_code == 0, r.output
        return json.loads(r.output)
    cold = run()
    warm = run("--lead-in", scen("clear_summer"))
    assert cold["lead_in"] is False and warm["lead_in"] is True
    assert warm["policies"]["b"] != cold["policies"]["b"]
    assert warm["policies"]["a"] == cold["policies"]["a"]  # no battery: nothing to learn
    bad = tmp_path / "lead.csv"
    bad.write_text("t_s,pv\n0,1\n")
    out = _err([scen("sandstorm"), "--site", os.path.join(SCEN, "sandstorm.json"),
                "--lead-in", str(bad)])
    assert "header" in out
