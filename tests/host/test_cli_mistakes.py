"""Issue 14 item 14 (the unclear cases) and item 12's `sil --dir`: what each command says
when the user gets something wrong, as subprocesses (exit code, one Error line)."""
import json
import os
import signal
import subprocess
import time

from conftest import REPO, VENV_BIN

EDGEGW = os.path.join(VENV_BIN, "edgegw")
KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def edgegw(*args, cwd=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEGW_")}
    return subprocess.run([EDGEGW] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error(p, *words):
    # click's own usage errors come with its Usage/Try lines above the Error line
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()
             and not ln.startswith(("Usage: ", "Try '"))]
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_sil_heapsize_named_and_too_small_said():
    one_error(edgegw("sil", "--heapsize", "abc"), "--heapsize", "abc")
    p = edgegw("sil", "--heapsize", "64k", "--duration", "30")
    one_error(p, "firmware did not start", "MemoryError", "--heapsize")


def test_sil_dir_keeps_a_pushed_config(tmp_path):
    from edgegw.vgw import site_config
    d = tmp_path / "gw"
    d.mkdir()
    cfg = site_config()
    cfg["device_id"] = "pushed-7"
    for b in cfg["buses"]:
        b["port"] = "dev/" + b["name"]
    text = json.dumps(cfg, indent=1)
    (d / "config.json").write_text(text)
    p = edgegw("sil", "--dir", d, "--duration", "3")
    assert p.returncode == 0, p.stderr
    assert "kept the config.json already in" in p.stdout
    assert (d / "config.json").read_text() == text
    one_error(edgegw("sil", "--dir", d, "--duration", "1", "--broker", "127.0.0.1:1"), "--dir")


def test_config_pull_diff_mask_link_key(tmp_path):
    from edgefw import config as fwconfig
    from edgegw.cmd_config import masked
    a = fwconfig.default()
    a["link"] = {"host": "127.0.0.1", "key": KEY}
    b = json.loads(json.dumps(a))
    b["link"]["key"] = KEY[::-1]
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(a))
    fb.write_text(json.dumps(b))
    p = edgegw("config", "diff", fa, fb)
    assert p.returncode == 1 and KEY not in p.stdout and KEY[::-1] not in p.stdout
    assert p.stdout.count("<secret sha256:") == 2       # the change still shows
    p = edgegw("config", "diff", fa, fb, "--show-secrets")
    assert KEY in p.stdout and KEY[::-1] in p.stdout
    assert KEY not in json.dumps(masked(a)) and masked(a)["link"]["host"] == "127.0.0.1"


def _tel(path, grid_w, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"ts": 1780000000 + 60 * i, "grid_w": grid_w, "it_w": grid_w,
                                "pv_w": 0, "bat_w": 0, "aux_w": 0}) + "\n")


def test_report_co2_below_one_kg_is_shown(tmp_path):
    tel = tmp_path / "t.jsonl"
    _tel(tel, 860, 61)                  # 860 W for an hour: 0.86 kWh from the grid
    p = edgegw("report", "--telemetry", tel, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)["total"]
    assert d["grid_imp_wh"] == 860 and abs(d["co2_kg"] - 0.456) < 0.001
    p = edgegw("report", "--telemetry", tel)
    assert " 0.46" in p.stdout.splitlines()[-2]


def test_report_eval_refuses_a_config_and_plots_with_labels(tmp_path, monkeypatch):
    one_error(edgegw("report", "--eval", os.path.join(REPO, "host", "edgegw", "templates",
                                                      "two-bus.json")), "--eval")
    from matplotlib.figure import Figure
    from edgegw import cmd_report
    seen = {}

    def keep(fig, path, **kw):
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["legend"] = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    monkeypatch.setattr(Figure, "savefig", keep)
    pol = cmd_report.eval_policies({"policies": {"a": {"peak_import_w": 9000, "co2_kg": 3.5},
                                                 "b": {"peak_import_w": 4000, "co2_kg": 2.0}}})
    cmd_report.plot_eval(pol, str(tmp_path))
    assert seen["titles"] == ["peak import W", "Scope 2 kg CO2"]
    assert seen["legend"] == ["a no battery", "b fallback"]


def test_link_device_wildcard_refused_and_keygen(tmp_path):
    one_error(edgegw("link", "setpoint", "100", "--device", "+", "--key", KEY), "--device")
    one_error(edgegw("link", "setpoint", "100", "--device", "a/b", "--key", KEY), "--device")
    k = tmp_path / "key.hex"
    p = edgegw("link", "keygen", "-o", k)
    assert p.returncode == 0 and len(k.read_text().strip()) == 64
    from edgefw import auth
    auth.parse_key(k.read_text().strip())
    one_error(edgegw("link", "keygen", "-o", k), "exists")
    one_error(edgegw("link", "keygen", "-o", tmp_path / "no" / "k.hex"), "does not exist")


def test_link_stale_hint_names_the_clock_skew():
    from edgegw.cmd_link import _stale_hint
    h = _stale_hint({"ts": 1780000000}, {"ts": 1780003600, "reason": "stale"})
    assert "3600 s ahead of" in h and "--ts gateway" in h and "--ts 1780003600" in h


def test_link_collect_reports_on_sigterm(tmp_path):
    from edgegw.mosq import Mosquitto
    with Mosquitto() as m:
        p = subprocess.Popen([EDGEGW, "link", "collect", "--broker", "%s:%d" % (m.host, m.port),
                              "--out", str(tmp_path / "c.jsonl")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["received"] == 0
