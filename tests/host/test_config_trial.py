"""Trial boot of a new config on the virtual gateway (a real MicroPython process): a
config that runs on trial and is killed before confirm() is not run again; the last good
copy runs and the status names why. confirm() on the gateway promotes it."""
import os
import signal
import time

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config, REPO

SPEED = 10


def _sim():
    return SimSite(pv=3000, it=2200, aux=400, soc_cpct=6000)


def _configs():
    import sys
    sys.path.insert(0, os.path.join(REPO, "firmware"))
    from edgefw import config
    good = site_config()
    good["device_id"] = "gw-lastgood"
    for b in good["buses"]:
        b["port"] = "dev/" + b["name"]
    new = dict(good, device_id="gw-new")
    return config, good, new


def _power_cut(gw):
    # SIGKILL: no clean stop, the way a power cut or a watchdog reset ends the firmware
    os.killpg(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(5)


def test_killed_trial_boots_last_good_and_says_why(tmp_path):
    config, good, new = _configs()
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    (tmp_path / "config.json").write_text(config.dumps(new))
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert (s["device_id"], s["config"], s["config_errors"]) == ("gw-new", "config.json", [])
        out = gw.exec("from edgefw import config\nprint(config.trial_status())")
        assert "'trial'" in out
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 0, 10, points=False)
        _power_cut(gw)
    assert "gw-lastgood" in (tmp_path / "config.last_good.json").read_text()
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert (s["device_id"], s["config"]) == ("gw-lastgood", "config.last_good.json")
        assert s["config_errors"][0].startswith("config.json: trial failed")
        assert "config.json: trial failed" in gw.output
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 0, 10, points=False)


def test_confirmed_trial_becomes_last_good(tmp_path):
    config, good, new = _configs()
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    (tmp_path / "config.json").write_text(config.dumps(new))
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 0, 10, points=False)
        assert "True" in gw.exec("from edgefw import config\nprint(config.confirm())")
        _power_cut(gw)
    assert (tmp_path / "config.last_good.json").read_text() == \
        (tmp_path / "config.json").read_text()
    assert not (tmp_path / "config.trial.json").exists()
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert (s["device_id"], s["config"], s["config_errors"]) == ("gw-new", "config.json", [])


def test_app_confirms_a_healthy_trial_by_itself(tmp_path):
    """The running gateway promotes its trial config after trial_s of healthy running
    (every device answering, no loop errors), without anyone calling confirm()."""
    config, good, new = _configs()
    new["trial_s"] = 10  # site seconds: 1 s of real time at 10x
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    (tmp_path / "config.json").write_text(config.dumps(new))
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.wait(lambda s: s["config_trial"]["state"] == "confirmed", 20, points=False)
        assert s["device_id"] == "gw-new"
    assert (tmp_path / "config.last_good.json").read_text() == \
        (tmp_path / "config.json").read_text()
    assert not (tmp_path / "config.trial.json").exists()


def test_unhealthy_trial_is_not_confirmed(tmp_path):
    """A trial config whose BMS never answers stays on trial (a reboot would fall back)."""
    config, good, new = _configs()
    new["trial_s"] = 10
    new["devices"] = [dict(d) for d in new["devices"]]  # own copies: the simulator keeps 1
    for d in new["devices"]:
        if d["role"] == "bms":
            d["slave"] = 99  # nobody answers at this address
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    (tmp_path / "config.json").write_text(config.dumps(new))
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        gw.wait(lambda s: s["buses"]["bus0"]["pcs"]["ok"] > 0, 10, points=False)
        time.sleep(30.0 / SPEED)  # three trial periods of site time
        s = gw.status(points=False)
        assert s["config_trial"]["state"] == "trial"
    assert "gw-lastgood" in (tmp_path / "config.last_good.json").read_text()
