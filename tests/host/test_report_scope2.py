"""edgegw report: Scope 2 both ways (location- and market-based with a certificate ledger),
hourly CFE from the firmware's hourly ledger, cost against no battery, PNG/HTML/PDF."""
import json
import os
import subprocess

from click.testing import CliRunner

from conftest import VENV_BIN
from edgegw.cli import cli  # first: importing a cmd module alone is circular

EDGEGW = os.path.join(VENV_BIN, "edgegw")
T0 = 1700006400           # 2023-11-15 00:00 UTC


def _telemetry(path):
    # day 1: 2 kW compute from the grid. day 2: 00-12 h 4 kW PV runs the 2 kW load and
    # charges the battery at 2 kW; 12-18 h the battery runs the load (its content is all
    # PV: green); 18-24 h the grid. 1-minute records.
    with open(path, "w") as f:
        for i in range(2 * 1440 + 1):
            m = i - 1440
            pv, bat = 0, 0
            if 0 <= m < 720:
                pv, bat = 4000, -2000
            elif 720 <= m < 1080:
                bat = 2000
            d = {"seq": i, "ts": T0 + i * 60, "state": "ONLINE", "it_w": 2000, "aux_w": 0,
                 "pv_w": pv, "bat_w": bat, "grid_w": 2000 - pv - bat, "soc_cpct": 5000}
            f.write(json.dumps(d) + "\n")


def _certs(path, **over):
    doc = {"site": "Test site 1", "period": "2023-11-15..16", "certificates": [
        # whole vintage inside the period: 20 kWh
        {"id": "GEC-1", "kind": "GEC", "mwh": 0.02, "from": "2023-11-15", "to": "2023-11-16",
         "source": "wind"},
        # a month's green power purchase: 2 of its 30 days fall in the period -> 2 kWh
        {"id": "GPT-7", "kind": "green_power", "kwh": 30, "from": "2023-11-01",
         "to": "2023-11-30"}]}
    doc.update(over)
    path.write_text(json.dumps(doc))
    return str(path)


def test_scope2_both_ways_cfe_cost_and_documents(tmp_path):
    tel = tmp_path / "tel.jsonl"
    _telemetry(tel)
    out = tmp_path / "rep"
    args = ["report", "--telemetry", str(tel), "--certificates", _certs(tmp_path / "c.json"),
            "--price", "0.5", "--out", str(out)]
    r = CliRunner().invoke(cli, args + ["--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    s = rep["scope2"]
    # grid import: day 1 48 kWh + day 2 18-24 h 12 kWh = 60 kWh
    assert s["grid_import_kwh"] == 60.0
    # location-based: 60 kWh x 0.5306 kg/kWh
    assert s["location_based"]["co2_kg"] == 31.836
    # market-based: certificates 20 + 30 x 2/30 = 22 kWh cover part; 38 kWh x 0.6096
    mb = s["market_based"]
    assert [c["claimed_kwh"] for c in mb["certificates"]] == [20.0, 2.0]
    assert mb["covered_kwh"] == 22.0 and mb["uncovered_kwh"] == 38.0
    assert mb["co2_kg"] == 23.165 and mb["factor_g_kwh"] == 609.6
    # hourly CFE: green IT = day 2 12 h PV direct (24 kWh) + 6 h battery (12 kWh) of 96 kWh
    assert s["cfe"]["hours"] == 48 and s["cfe"]["hourly_pct"] == 37.5
    assert s["cfe"]["netted_pct"] == 50.0    # netting would claim all 48 kWh of PV
    hrs = {h["t0"]: h for h in rep["hours"]}
    assert hrs[T0 + 86400 + 13 * 3600]["bat_green_wh"] == 2000        # 13-14 h, day 2
    assert hrs[T0 + 86400 + 13 * 3600]["it_green_wh"] == 2000
    assert hrs[T0 + 86400 + 19 * 3600]["it_green_wh"] == 0
    assert s["reconciliation"]["max_abs_wh"] <= 1
    # cost: 60 kWh x 0.5 = 30 CNY; without the battery day 2 imports 12-24 h: 72 kWh, 36 CNY
    c = s["cost"]
    assert c["energy_cny"] == 30.0 and c["no_battery_cny"] == 36.0 and c["saving_cny"] == 6.0
    assert "no tariff configured" in c["note"]
    # the documents
    for f, magic in (("hourly_cfe.png", b"\x89PNG"), ("scope2.png", b"\x89PNG"),
                     ("summary.pdf", b"%PDF")):
        data = open(out / f, "rb").read()
        assert data[:4] == magic and len(data) > 5000, f
    page = (out / "summary.html").read_text()
    for want in ("Test site 1", "location-based", "market-based", "GHG Protocol", "0.6096",
                 "0.5306", "Hourly CFE score", "37.5 %", "GEC-1", "2023-11-15 00:00",
                 "data:image/png;base64,"):
        assert want in page, want
    lines = (out / "hourly.csv").read_text().splitlines()
    assert len(lines) == 49 and lines[0].startswith("hour_start_utc,pv_wh")
    # the text report
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "market-based     609.6 g/kWh x      38.0 kWh not covered" in r.output
    assert "=     23.16 kg CO2" in r.output or "=     23.17 kg CO2" in r.output
    assert "37.5 % over 48 h" in r.output and "would claim 50.0 %" in r.output
    assert "flat 0.5000 CNY/kWh (no tariff configured): 30.00 CNY" in r.output
    assert "without the battery 36.00 CNY: saving 6.00 CNY" in r.output


def test_no_certificates_no_price(tmp_path):
    tel = tmp_path / "tel.jsonl"
    _telemetry(tel)
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel), "--json"])
    s = json.loads(r.output)["scope2"]
    # everything imported is uncovered: 60 kWh x 0.6096
    assert s["market_based"]["co2_kg"] == 36.576 and s["market_based"]["certificates"] == []
    assert s["cost"].get("energy_cny") is None
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel)])
    assert "Cost: no tariff configured: give --price CNY/kWh" in r.output


def test_bad_certificate_ledger_one_error_line(tmp_path):
    tel = tmp_path / "tel.jsonl"
    _telemetry(tel)
    bad = {"kind": ({"certificates": [{"id": "x", "kind": "REC", "kwh": 1, "from": "2023-11-01",
                                       "to": "2023-11-02"}]}, "certificates[0].kind"),
           "neg": ({"certificates": [{"id": "x", "kind": "GEC", "mwh": -1, "from": "2023-11-01",
                                      "to": "2023-11-02"}]}, "certificates[0].mwh"),
           "date": ({"certificates": [{"id": "x", "kind": "GEC", "mwh": 1, "from": "2023-13-01",
                                       "to": "2023-11-02"}]}, "certificates[0].from"),
           "unretired": ({"certificates": [{"id": "x", "kind": "GEC", "mwh": 1, "retired": False,
                                            "from": "2023-11-01", "to": "2023-11-02"}]},
                         "certificates[0].retired")}
    for name, (doc, word) in bad.items():
        p = tmp_path / (name + ".json")
        p.write_text(json.dumps(doc))
        r = subprocess.run([EDGEGW, "report", "--telemetry", str(tel), "--certificates", str(p)],
                           capture_output=True, text=True, timeout=60)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, (name, r.stderr)
        assert err[0].startswith("Error: --certificates") and word in err[0], err
    # telemetry with only holes longer than 10 min: one line, not a KeyError traceback
    gap = tmp_path / "gap.jsonl"
    gap.write_text('{"ts": 1700000000, "it_w": 1}\n{"ts": 1700009000, "it_w": 1}\n')
    r = subprocess.run([EDGEGW, "report", "--telemetry", str(gap)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nothing to integrate" in \
        r.stderr, r.stderr
    p = tmp_path / "notjson.json"
    p.write_text("{oops")
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel), "--certificates", str(p)])
    assert r.exit_code == 2 and "--certificates" in r.output and "not valid JSON" in r.output


def test_gateway_ledger_in_telemetry_is_cross_checked(tmp_path):
    # the records carry the gateway's own ledger (g), made by the firmware's Energy stepped
    # as the gateway steps it; the report's hours agree, a tampered hour shows
    from edgefw import clock, energy, dispatch
    tel = tmp_path / "tel.jsonl"
    _telemetry(tel)
    recs = [json.loads(x) for x in tel.read_text().splitlines()]
    e = energy.Energy(dispatch.validate_params({}))
    e.ledger.valid_from = -clock.EPOCH
    prev = None
    for r in recs:
        if prev is not None:
            e.step(60000, prev["pv_w"], prev["pv_w"], prev["it_w"], 0, prev["bat_w"],
                   prev["grid_w"])
        e.ledger.roll(r["ts"] - clock.EPOCH, e)
        r["g"] = e.hourly(r["seq"])
        prev = r
    recs[1500]["g"]["hour"]["it_wh"] += 5      # an early copy of hour 24: later ones win
    tel.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel), "--json"])
    g = json.loads(r.output)["scope2"]["reconciliation"]["gateway_ledger"]
    assert g["hours"] == 48 and g["max_abs_diff_wh"] == {"pv_wh": 0, "grid_imp_wh": 0,
                                                        "it_wh": 0, "it_green_wh": 0}
    recs[-1]["g"]["hour"]["it_wh"] += 5        # the last record's copy of hour 47
    tel.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = CliRunner().invoke(cli, ["report", "--telemetry", str(tel)])
    assert "Gateway's own hourly ledger (telemetry g): 48 h, max |difference| pv 0 Wh, " \
        "grid_imp 0 Wh, it 5 Wh, it_green 0 Wh" in r.output, r.output
