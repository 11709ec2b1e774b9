"""Link and power faults: broker loss and return (the outage's telemetry arrives exactly
once), a power cut (SIGKILL of micropython) during a config write and during a telemetry
ring write (restart on the same directory: boots, last good config, ring intact), and
garbage config files."""
import json
import os
import random
import sys
import time

import pytest

from edgegw.vgw import FIRMWARE, site_config
from hilkit.cloud import KEY_HEX
from hilkit.plugin import DEVICE_ID
from hilkit.scenario import RecSite

if FIRMWARE not in sys.path:
    sys.path.insert(0, FIRMWARE)
from edgefw import config as fwconfig  # noqa: E402
from edgefw.ring import Ring  # noqa: E402


def _site():
    return RecSite(pv=3000, it=2200, aux=400, soc_cpct=6000)


def _cfg(broker=None, status_s=2, **link):
    c = site_config(control={"mode": "hold", "hold_w": 0}, safety={"clean_s": 2},
                    status_s=status_s)
    c["device_id"] = DEVICE_ID
    if broker is not None:
        lk = {"host": broker.host, "port": broker.port, "key": KEY_HEX, "keepalive_s": 2,
              "grace_s": 1, "recover_s": 1, "backoff_min_ms": 1000, "backoff_max_ms": 1000}
        lk.update(link)
        c["link"] = lk
    return c


def test_broker_loss_and_return(launch, broker, cloud, report):
    """The broker dies for 40 site s: the link goes GRACE -> FALLBACK, telemetry goes to the
    ring; the broker returns: RECOVERING -> ONLINE and the outage's telemetry arrives, each
    record exactly once, no seq gap."""
    report(scenario="steady, telemetry every 2 s", fault="broker killed 40 s, restarted")
    speed = 10
    gw = launch(_cfg(broker), _site(), speed=speed)
    gw.wait(lambda s: s["link"]["state"] == "ONLINE", 20, points=False)
    cloud.wait(lambda: len(cloud.telemetry) >= 3, 20, "telemetry")
    time.sleep(1.2)    # the broker's autosave has the cloud's session
    t_down = gw.status(False)["t"]
    broker.stop()
    gw.wait(lambda s: s["link"]["state"] == "FALLBACK", 15, points=False)
    time.sleep(max(0.0, 40.0 / speed - 1.0))
    s = gw.status(False)
    stored = s["link"]["ring_n"]
    t_up = s["t"]
    broker.start()
    cloud.wait_ready(15)
    gw.wait(lambda s: s["link"]["state"] == "ONLINE" and s["link"]["ring_n"] == 0
            and not s["link"].get("inflight"), 30, points=False)
    # the last records after the return: a bounded wait for them, not a fixed sleep (a busy
    # machine delivers later, never less)
    cloud.wait(lambda: len([r for _, r in cloud.all_seqs().values()
                            if t_down < r["ts"] < t_up]) >= stored, 30, fail=False)
    rep = cloud.report()
    # the ring holds telemetry and events (state changes): both count
    outage = [q for q, (leaf, r) in cloud.all_seqs().items() if t_down < r["ts"] < t_up]
    dup_outage = [q for q in outage if q in rep["raw"] and rep["raw"][q] != 1]
    report.figure("%d records stored in the outage, %d arrived, lost %d, duplicated %d "
                  "(outage: %d)" % (stored, len(outage), rep["lost"], rep["dup"],
                                    len(dup_outage)))
    report.metric(stored=stored, outage_received=len(outage), lost=rep["lost"],
                  dup_total=rep["dup"], dup_outage=len(dup_outage),
                  link=gw.status(False)["link"])
    assert stored >= 10
    if len(outage) < stored - 2:
        from hilkit.plugin import RESULTS
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "broker_loss.diag.txt"), "w") as f:
            f.write("t_down %s t_up %s\n%s\n%s\n%s\n" % (
                t_down, t_up, json.dumps(sorted((q, leaf, r["ts"]) for q, (leaf, r) in
                                                cloud.all_seqs().items())),
                json.dumps(gw.status(False)["link"]), broker.read_log()))
    assert len(outage) >= stored - 2
    assert rep["lost"] == 0, rep["seqs"]
    assert not dup_outage, dup_outage
    ev = [r for r in cloud.events.values() if r.get("kind") == "state"]
    assert ev, "state change events (stored during the outage) did not arrive"


@pytest.mark.sil_only
def test_power_cut_during_config_write(launch, report):
    """The control loop stopped, a REPL thread rewrites config.json with the firmware's
    atomic writer (config.write_atomic: temp file + rename, CRC trailer), two versions in
    turn; SIGKILL at a random moment, 5 times: every restart boots on a valid config (one of
    the two, or the last good one), never on a torn file."""
    report(scenario="steady", fault="power cut during config writes (x5)")
    gw = launch(_cfg(), _site(), speed=10)
    gw.wait(lambda s: s["config"] == "config.json", 20, points=False)
    rng = random.Random(5)
    seen = []
    for i in range(5):
        gw.exec("import _thread\nfrom edgefw import config, app\n"
                "_c = dict(app._app.cfg)\n_t = []\n"
                "for _k in 'AB':\n"
                " _c['note'] = _k * 4000\n"
                " _t.append(config.dumps(_c))\n"
                "def _w():\n"
                " n = 0\n"
                " while True:\n"
                "  config.write_atomic(config.PATH, _t[n & 1])\n"
                "  n += 1\n"
                "_thread.start_new_thread(_w, ())\n")
        time.sleep(0.1 + rng.random() * 0.4)
        gw.power_cut()
        tmp = os.path.exists(os.path.join(gw.dir, "config.json.tmp"))
        cfg, errs = fwconfig.read(os.path.join(gw.dir, "config.json"))
        which = (cfg.get("note") or "?")[:1] if cfg else "torn"
        gw = gw.restart()
        launch.made.append(gw)
        s = gw.wait(lambda s: s["running"], 20, points=False)
        seen.append((s["config"], tmp, which))
        assert cfg is not None, errs          # rename is atomic: never a torn config.json
        assert which in ("A", "B"), "the write loop did not run"
        assert s["config"] == "config.json" and s["device_id"] == DEVICE_ID, s["config_errors"]
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 2, 20, points=False)
    report.figure("5 cuts: config.json was %s; cut inside a write (temp file left) %d x; "
                  "boots %s" % ("/".join(x[2] for x in seen), sum(1 for x in seen if x[1]),
                                ", ".join(sorted(set(x[0] for x in seen)))))
    report.metric(cuts=[{"config": a, "tmp_left": b, "version": c} for a, b, c in seen])


@pytest.mark.sil_only
def test_power_cut_during_ring_write(launch, broker, cloud, report):
    """The broker is down; the control loop is stopped and a REPL thread sends telemetry
    through the gateway's own link (all of it lands in the store-and-forward ring); SIGKILL
    at a random moment, 4 times. Each restart boots; the ring opens with at most the one
    record the cut tore and seqs in order; when the broker returns every stored record
    arrives (gaps only where a cut tore a record)."""
    report(scenario="steady, broker down", fault="power cut during telemetry ring writes (x4)")
    time.sleep(1.2)    # the broker's autosave has the cloud's session
    broker.stop()
    # 8 KB segments as the default ring, room for every record written here (no drops)
    gw = launch(_cfg(broker, status_s=5, ring_kb=512, ring_segs=64), _site(), speed=10)
    rng = random.Random(9)
    cuts = []
    for i in range(4):
        gw.wait(lambda s: s["running"] and s["link"]["ring_n"] >= 1, 20, points=False)
        gw.exec("from edgefw import app as _a\n_a.stop()")
        gw.wait(lambda s: not s["running"], 10, points=False)
        gw.exec("import _thread\nfrom edgefw import app as _a\n"
                "import time\n"
                "def _w():\n"
                " n = 0\n"
                " while True:\n"
                "  n += 1\n"
                "  _a._app.link.telemetry({'n': n, 'pad': 'x' * 200})\n"
                "  time.sleep_us(300)\n"
                "_thread.start_new_thread(_w, ())\n")
        time.sleep(0.02 + rng.random() * 0.1)
        gw.power_cut()
        r = Ring(os.path.join(gw.dir, "ring"), 512 * 1024, 64)
        seqs = []
        while True:
            x = r.next()
            if x is None:
                break
            seqs.append(x[2])
        cuts.append({"records": len(r), "torn": r.torn, "dropped": r.dropped,
                     "increasing": all(b > a for a, b in zip(seqs, seqs[1:]))})
        assert r.torn <= 1, cuts
        assert cuts[-1]["increasing"] and len(seqs) == len(r), cuts
        gw = gw.restart()
        launch.made.append(gw)
        s = gw.wait(lambda s: s["running"] and s["link"] is not None, 20, points=False)
        assert s["config"] == "config.json"
        assert s["link"]["ring_n"] >= len(r) - 1
    n_ring = gw.status(False)["link"]["ring_n"]
    broker.start()
    cloud.wait_ready(15)
    gw.wait(lambda s: s["link"]["ring_n"] == 0 and s["link"]["state"] in ("ONLINE", "RECOVERING"),
            90, points=False)
    # the ring is drained on the gateway's side; what was in flight reaches the cloud later
    # on a busy machine: wait for it (bounded), never a fixed sleep
    cloud.wait(lambda: len(cloud.all_seqs()) >= n_ring, 30, fail=False)
    rep = cloud.report()
    report.figure("4 cuts: %s records in the ring, torn %s; %d stored at the end, %d arrived, "
                  "lost %d, dup %d" % ([c["records"] for c in cuts], [c["torn"] for c in cuts],
                                       n_ring, rep["received"], rep["lost"], rep["dup"]))
    report.metric(cuts=cuts, received=rep["received"], lost=rep["lost"], dup=rep["dup"])
    assert rep["received"] >= n_ring - 10   # the events of the boots are not telemetry
    # within one boot nothing is missing except what a cut tore (one record per cut)
    assert rep["lost"] <= sum(c["torn"] for c in cuts), rep


GARBAGE = {
    "random bytes": bytes(random.Random(3).randrange(256) for _ in range(300)),
    "truncated JSON": None,      # filled in below: half of a valid file
    "bad values": None,          # valid JSON, slave 300 and an unknown map
    "empty": b"",
}


@pytest.mark.sil_only
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_config(launch, tmp_path, report, kind):
    """config.json replaced by garbage: the gateway boots on config.last_good.json, names the
    problem in status()["config_errors"] and on the console, and runs."""
    report(scenario="steady", fault="garbage config: %s" % kind)
    good = _cfg()
    good["device_id"] = "hil-lastgood"
    for b in good["buses"]:
        b["port"] = "dev/" + b["name"]
    text = fwconfig.dumps(good)
    d = tmp_path / "gw"
    d.mkdir()
    (d / "config.last_good.json").write_text(text)
    data = GARBAGE[kind]
    if kind == "truncated JSON":
        data = text[:len(text) // 2].encode()
    elif kind == "bad values":
        bad = json.loads(json.dumps(good))
        bad["devices"][0]["slave"] = 300
        bad["devices"][1]["map"] = "no_such_map"
        data = json.dumps(bad).encode()
    (d / "config.json").write_bytes(data)
    gw = launch(good, _site(), speed=10, dirpath=str(d), write_config=False)
    s = gw.wait(lambda s: s["running"], 20, points=False)
    errs = [e for e in s["config_errors"] if e.startswith("config.json")]
    report.figure("booted on %s; %s" % (s["config"], errs[0] if errs else "no error named"))
    report.metric(errors=s["config_errors"])
    assert s["config"] == "config.last_good.json" and s["device_id"] == "hil-lastgood"
    assert errs, s["config_errors"]
    if kind == "bad values":
        assert any("devices[0].slave" in e for e in errs), errs
    assert "config.json: " in gw.output
    gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 2 and not s["safety"]["tripped"], 20,
            points=False)
