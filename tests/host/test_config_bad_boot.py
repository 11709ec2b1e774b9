"""Issue 14 item 2 on the real MicroPython (virtual gateway): a config.json that used to
make config.validate raise (a bus name of null, a device naming an unknown bus) must not
stop the boot: the last good copy runs and the status names the fields."""
import json
import os

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config, REPO

SPEED = 10


def test_bad_config_json_boots_the_last_good(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(REPO, "firmware"))
    from edgefw import config
    good = site_config()
    good["device_id"] = "gw-lastgood"
    for b in good["buses"]:
        b["port"] = "dev/" + b["name"]
    bad = json.loads(json.dumps(good))
    bad["device_id"] = "gw-bad"
    bad["buses"][0]["name"] = None
    bad["devices"][0]["bus"] = "nowhere"
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    (tmp_path / "config.json").write_text(config.dumps(bad))
    sim = SimSite(pv=3000, it=2200, aux=400, soc_cpct=6000)
    with VirtualGateway(str(tmp_path), good, sim, speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert (s["device_id"], s["config"]) == ("gw-lastgood", "config.last_good.json")
        errs = s["config_errors"]
        assert "config.json: buses[0].name: missing (text)" in errs, errs
        assert any(e.startswith("config.json: devices[0].bus: 'nowhere' is not a bus name")
                   for e in errs), errs
        assert "Traceback" not in gw.output
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 0, 10, points=False)


def test_cli_validate_names_the_fields_without_a_traceback(tmp_path):
    import subprocess
    edgegw = os.path.join(REPO, ".venv", "bin", "edgegw")
    with open(os.path.join(REPO, "host", "edgegw", "templates", "two-bus.json")) as f:
        c = json.load(f)
    c["buses"][0]["name"] = None
    c["devices"][0]["bus"] = "nowhere"
    (tmp_path / "bad.json").write_text(json.dumps(c))
    (tmp_path / "null.json").write_text("null\n")
    for name, want in (("bad.json", "devices[0].bus: 'nowhere' is not a bus name (bus1)"),
                       ("null.json", "config: must be a JSON object")):
        r = subprocess.run([edgegw, "config", "validate", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("Error: ") and want in r.stderr, r.stderr
