"""edgegw report: daily flows, renewable share and Scope 2 from telemetry; eval tables."""
import json
import os
import subprocess

from click.testing import CliRunner

from conftest import VENV_BIN
from edgegw.cli import cli  # first: importing a cmd module alone is circular

EDGEGW = os.path.join(VENV_BIN, "edgegw")
DAY = 86400


def _telemetry(path):
    # day 1: 2 kW compute from the grid; day 2: 2 kW compute from 2 kW of PV (1 min records)
    with open(path, "w") as f:
        for i in range(2 * 1440 + 1):
            ts = 1700006400 + i * 60          # 2023-11-15 00:00 UTC
            pv = 0 if i < 1440 else 2000
            d = {"seq": i, "ts": ts, "state": "ONLINE", "it_w": 2000, "aux_w": 0, "pv_w": pv,
                 "bat_w": 0, "grid_w": 2000 - pv, "soc_cpct": 5000, "_topic": "telemetry"}
            f.write(json.dumps(d) + "\n")
        f.write(json.dumps({"seq": 1, "ts": 0, "_topic": "events"}) + "\n")


def test_report_from_telemetry(tmp_path):
    tel = tmp_path / "tel.jsonl"
    _telemetry(tel)
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel), "--out", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    d1, d2 = (rep["days"][k] for k in sorted(rep["days"]))
    assert d1["it_wh"] == 48000 and d1["grid_imp_wh"] == 48000 and d1["renewable_pct"] == 0
    assert d1["co2_kg"] == 25.469                  # 48 kWh x 0.5306 kg/kWh (to the gram)
    assert d2["pv_load_wh"] == 48000 and d2["renewable_pct"] == 100 and d2["co2_kg"] == 0
    assert rep["total"]["renewable_pct"] == 50.0 and rep["grid_factor_g_kwh"] == 530.6
    for f in ("report.json", "daily.csv", "daily_energy.png", "power.png"):
        assert os.path.getsize(out / f) > 100, f
    assert open(out / "daily_energy.png", "rb").read(4) == b"\x89PNG"
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel), "--region", "southwest"])
    assert r.exit_code == 0 and "247.2 g CO2/kWh" in r.output


def test_report_from_eval(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"scenario": "x", "runs": {
        "no_battery": {"peak_import_w": 9000, "grid_import_kwh": 120.5, "co2_kg": 63.9},
        "fallback": {"peak_import_w": 6000, "grid_import_kwh": 100.1, "co2_kg": 53.1}}}))
    r = CliRunner().invoke(cli, ["report", "--eval", str(run), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "fallback" in r.output and os.path.exists(tmp_path / "o" / "eval.png")


def test_report_bad_arguments(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text("{oops\n")
    for args, word in ((["report"], "--telemetry"),
                       (["report", "--telemetry", str(bad)], "--telemetry"),
                       (["report", "--telemetry", str(tmp_path / "none")], "--telemetry"),
                       (["report", "--eval", str(bad)], "--eval")):
        r = subprocess.run([EDGEGW] + args, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and word in r.stderr and "Traceback" not in r.stderr, args
    tel = tmp_path / "t.jsonl"
    _telemetry(tel)
    r = subprocess.run([EDGEGW, "report", "--telemetry", str(tel), "--region", "mars"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--region" in r.stderr and "mars" in r.stderr
