"""Software-in-the-loop: the unmodified firmware under micropython, polling simulated
devices over real ptys (host/edgegw/vgw.py). Site clock 10x real time."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config, REPO
from protocols import modbus_rtu as rtu
from protocols import regmap

SPEED = 10
MPREMOTE = os.path.join(REPO, ".venv", "bin", "mpremote")


def _sim():
    # steady site: constant PV and loads, so values hold still between polls
    return SimSite(pv=3000, it=2200, aux=400, soc_cpct=6000)


def _cfg():
    return site_config(control={"mode": "hold", "hold_w": 800}, safety={"clean_s": 2})


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with VirtualGateway(str(tmp_path_factory.mktemp("vgw")), _cfg(), _sim(), speed=SPEED) as g:
        g.wait(lambda s: all(b[d]["polls"] >= 2 for b in s["buses"].values()
                             for d in b if not d.startswith("_")), 20, points=False)
        yield g


def _resolution(p):
    # one step of the register's integer, in the point's unit (mul/div scaling)
    r = p.get("mul", 1) // max(1, p.get("div", 1))
    return max(1, r)


def test_every_device_polled_values_match_simulator(gw):
    gw.sim.freeze()
    try:
        s0 = gw.status(points=False)
        polls = {d: b[d]["polls"] for b in s0["buses"].values() for d in b
                 if not d.startswith("_")}
        # two more polls of every device after the freeze: what it shows is current
        s = gw.wait(lambda s: all(s["buses"][b][d]["polls"] >= polls[d] + 2
                                  for b in s["buses"] for d in s["buses"][b]
                                  if not d.startswith("_")), 20)
        assert s["nerr"] == 0, s["errors"]  # the loop never raised
        checked = 0
        for name, dev in gw.devices.items():
            truth = gw.sim.points(dev.role)
            got = s["site"]["points"][name]
            assert s["buses"]["bus1" if name == "bms" else "bus0"][name]["ok"] > 0
            for pn, p in dev.map.points.items():
                if pn not in truth or p["table"] in ("coil", "discrete") and pn not in got:
                    continue
                assert pn in got, "%s.%s not decoded" % (name, pn)
                v, age, q = got[pn]
                tol = _resolution(p) + abs(truth[pn]) // 1000000
                assert abs(v - truth[pn]) <= tol, (name, pn, v, truth[pn], tol)
                assert q == "ok"
                checked += 1
        assert checked >= 40
        site = s["site"]
        sim = gw.sim.summary()
        for k in ("grid_w", "pv_w", "it_w", "bat_w"):
            assert abs(site[k] - sim[k]) <= 1, (k, site[k], sim[k])
        assert abs(site["soc_cpct"] - sim["soc_cpct"]) <= 10
    finally:
        gw.sim.freeze(False)


def _polls(s):
    return {d: b[d]["polls"] for b in s["buses"].values() for d in b if not d.startswith("_")}


def _probe_site_s(gw, name):
    """Site s one unanswered first read of a device holds its line: the response timeout
    plus the wire time of the answer it waits for (busmaster), at the gateway's speed."""
    d = next(x for x in gw.cfg["devices"] if x["name"] == name)
    b = next(x for x in gw.cfg["buses"] if x["name"] == d["bus"])
    fc, addr, qty = regmap.plan(gw.devices[name].map)[0]
    n = rtu.Request(d["slave"], fc, addr, qty).response_len()
    wire_ms = (n * rtu.char_us(b["baud"]) + 999) // 1000
    return (b["timeout_ms"] + wire_ms) * SPEED / 1000.0


def test_silent_device_goes_stale_others_keep_rate(tmp_path):
    """Its own gateway, counts read at exact site instants (run_to holds the site there
    while the firmware runs on): the same figures on a quiet and on a busy host."""
    with VirtualGateway(str(tmp_path), _cfg(), _sim(), speed=SPEED) as gw:
        _silent_device(gw)


def _silent_device(gw):
    others = ["grid", "it", "pcs", "bms"]
    pv = gw.devices["pv"]
    stale_polls, retries, win = 3, 1, 30.0
    try:
        t0 = gw.run_to(gw.sim.t + 10)
        p0 = _polls(gw.status(False))
        t1 = gw.run_to(t0 + win)
        p1 = _polls(gw.status(False))
        n1 = pv.requests
        pv.mode = "silent"
        t2 = gw.run_to(t1 + 20)
        s = gw.status()
        st = s["buses"]["bus0"]["pv"]
        n2 = pv.requests
        p2 = _polls(s)
        assert st["stale"], st
        # stale after N missed polls of (1 + retries) attempts each, not later; once stale
        # one attempt per backoff probe
        assert st["missed"] >= stale_polls and st["timeouts"] >= stale_polls * (1 + retries)
        assert n2 - n1 <= stale_polls * (1 + retries) + (st["missed"] - stale_polls) + 1
        assert not any(s["buses"][b][d]["stale"] for b in s["buses"] for d in s["buses"][b]
                       if not d.startswith("_") and d != "pv")
        assert s["site"]["points"]["pv"]["p_w"][2] == "stale"
        gw.run_to(t2 + win)
        p3 = _polls(gw.status(False))
        probes = pv.requests - n2
        hold = _probe_site_s(gw, "pv")
        print("silent pv: stale after %d requests (missed %d, timeouts %d); %d probes of "
              "%.2f site s in %d s; polls before %s, after %s" % (
                  n2 - n1, st["missed"], st["timeouts"], probes, hold, win,
                  " ".join("%s %d" % (k, p1[k] - p0[k]) for k in others),
                  " ".join("%s %d" % (k, p3[k] - p2[k]) for k in others)))
        # lockstep: every byte the firmware reported came, every answer was readable
        assert [b.stalls for b in gw.buses.values()] == [0, 0]
        for k in others:
            # the others keep their rate in the line time the probes leave them
            free = max(0.0, 1.0 - probes * hold / win)
            assert p3[k] - p2[k] >= int((p1[k] - p0[k]) * free) - 1, (k, p1[k] - p0[k],
                                                                    p3[k] - p2[k], free)
    finally:
        pv.mode = "ok"
        gw.resume()
    gw.wait(lambda s: not s["buses"]["bus0"]["pv"]["stale"], 40, points=False)


def test_crc_corrupted_responses_counted_and_discarded(gw):
    grid = gw.devices["grid"]
    with gw.hold():  # no poll completes between the count and the switch (busy host)
        s0 = gw.status(points=False)["buses"]["bus0"]["grid"]
        gw.sim.freeze()
        real = gw.sim.points("grid_meter")["p_w"]
        grid.values["p_w"] = 12345  # what a corrupted frame would carry
        grid.mode = "crc"
    try:
        s = gw.wait(lambda s: s["buses"]["bus0"]["grid"]["crc"] >= s0["crc"] + 4, 15,
                    interval=0.1)
        st = s["buses"]["bus0"]["grid"]
        assert st["ok"] == s0["ok"] or st["ok"] <= s0["ok"] + 2  # at most polls in flight
        assert s["site"]["points"]["grid"]["p_w"][0] != 12345
    finally:
        grid.mode = "ok"
        grid.values.pop("p_w")
        gw.sim.freeze(False)
    s = gw.wait(lambda s: s["buses"]["bus0"]["grid"]["ok"] > st["ok"] + 1, 15)
    assert abs(s["site"]["points"]["grid"]["p_w"][0] - gw.sim.points("grid_meter")["p_w"]) \
        <= abs(real) + 5000  # fresh values again (the site keeps moving)
    assert s["buses"]["bus0"]["_junk"] >= 0


def test_mpremote_reads_status(gw):
    code = "import json\nfrom edgefw import app\nprint(json.dumps(app.status(False)))"
    r = subprocess.run([MPREMOTE, "connect", gw.repl_port, "resume", "exec", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["running"] and s["platform"] == "unix" and s["speed"] == SPEED
    assert set(s["buses"]) == {"bus0", "bus1"} and s["heap"]["free"] > 0
    assert gw.alive()


def _pcs_writes(gw):
    """(t, fc, addr, values) of the write frames the simulated PCS received."""
    out = []
    for t, frame, rsp in list(gw.devices["pcs"].log):
        req = rtu.decode_request(frame)
        if req.fc in (5, 6, 15, 16):
            out.append((t, req.fc, req.addr, req.values))
    return out


def test_bms_alarm_zero_setpoint_on_the_wire_within_one_poll(tmp_path):
    # near real time: at 10x a 1 s poll period is 100 ms of real time, and a busy CI box
    # can stall the host side that long; the reaction is counted in bus turns anyway
    speed = 2
    # export allowed: the steady site already exports a little, and the zero-export bound
    # would otherwise hold the 1500 W hold setpoint back (tested in test_sil_safety)
    cfg = site_config(control={"mode": "hold", "hold_w": 1500}, safety={"clean_s": 3},
                      site={"export_allowed": True})
    with VirtualGateway(str(tmp_path), cfg, _sim(), speed=speed) as gw:
        gw.wait(lambda s: s["sent_w"] == 1500 and s["run_cmd"] == 1, 30, points=False)
        gw.wait(lambda s: gw.sim.p_set_w == 1500 and gw.sim.run == 1, 10, points=False)
        pcs = regmap.load("sunspec_pcs")
        sp_addr = pcs.points["p_set_w"]["addr"]
        run_addr = pcs.points["run"]["addr"]
        gw.sim.bms_alarm = 1 << 2  # pack over-voltage alarm
        t_inj = time.monotonic()  # every BMS request from now on is answered with it
        s = gw.wait(lambda s: s["safety"]["tripped"], 10, interval=0.1, points=False)
        assert "alarm" in s["safety"]["reason"]
        time.sleep(0.3)
        # the first BMS alarm read after the injection ...
        bms = [(t, rtu.decode_request(f)) for t, f, r in list(gw.devices["bms"].log)
               if t >= t_inj]
        reads = [t for t, q in bms if q.fc == 1]
        t_seen = reads[0]
        nxt = [t for t, q in bms if q.fc == 1 and t > t_seen]
        # ... is followed by 0 W (the exact bytes: FC16, p_set_w = 0) and stop, before the
        # BMS is read again one poll period later
        w = [x for x in _pcs_writes(gw) if x[0] >= t_seen]
        zero = [x for x in w if x[2] == sp_addr and x[3] == [0, 0]]
        stop = [x for x in w if x[2] == run_addr and x[3] == [0]]
        assert zero and stop, w
        assert zero[0][0] <= stop[0][0]
        if nxt:
            assert zero[0][0] < nxt[0], (zero[0][0] - t_seen, nxt[0] - t_seen)
        assert (zero[0][0] - t_seen) * speed * 1000 < cfg["devices"][0]["period_ms"]
        assert gw.sim.p_set_w == 0 and gw.sim.run == 0
        # held at 0 while the alarm stands; released clean_s after it clears
        gw.sim.bms_alarm = 0
        t_clear = time.monotonic()
        gw.wait(lambda s: not s["safety"]["tripped"], 20, points=False)
        assert (time.monotonic() - t_clear) * speed >= 3 - 0.5
        gw.wait(lambda s: gw.sim.p_set_w == 1500 and gw.sim.run == 1, 10, points=False)


def test_corrupt_config_boots_on_last_good(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(REPO, "firmware"))
    from edgefw import config
    good = site_config()
    good["device_id"] = "gw-lastgood"
    for b in good["buses"]:
        b["port"] = "dev/" + b["name"]
    (tmp_path / "config.last_good.json").write_text(config.dumps(good))
    bad = dict(good, device_id="gw-new")
    text = config.dumps(bad)
    (tmp_path / "config.json").write_text(text[:len(text) // 2])  # a torn write
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert s["config"] == "config.last_good.json"
        assert s["device_id"] == "gw-lastgood"
        assert any(e.startswith("config.json: ") for e in s["config_errors"])
        assert "config.json: " in gw.output
        gw.wait(lambda s: s["buses"]["bus1"]["bms"]["ok"] > 0, 10, points=False)
    # a bit flipped behind the checksum: also refused, named as a checksum problem
    (tmp_path / "config.json").write_text(text.replace("gw-new", "gw-nex"))
    with VirtualGateway(str(tmp_path), good, _sim(), speed=SPEED, write_config=False) as gw:
        s = gw.status(points=False)
        assert s["config"] == "config.last_good.json"
        assert any("checksum" in e for e in s["config_errors"])


def test_cli_sil_prints_ports_and_live_line(tmp_path):
    from click.testing import CliRunner
    from edgegw.cli import cli
    r = CliRunner().invoke(cli, ["sil", "--dir", str(tmp_path), "--speed", "10",
                                 "--scenario", "steady", "--duration", "1.5"])
    assert r.exit_code == 0, r.output
    assert "REPL: /dev/pts/" in r.output and "bus1: /dev/pts/" in r.output
    assert "soc  60.0 %" in r.output and "pv  3000 W" in r.output
    r = CliRunner().invoke(cli, ["sil", "--scenario", "nope"])
    assert r.exit_code == 2 and "--scenario" in r.output and "Traceback" not in r.output


def test_cli_sim_serves_pymodbus_on_a_pty():
    # pymodbus as an independent master against `edgegw sim` (what a real board sees)
    import re
    import struct
    import sys
    from pymodbus.client import ModbusSerialClient
    p = subprocess.Popen([sys.executable, "-m", "edgegw", "sim", "--bus", "bus0=pty",
                          "--scenario", "steady", "--duration", "20"],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = p.stdout.readline()
        port = re.match(r"bus0: (\S+) 9600 baud", line).group(1)
        c = ModbusSerialClient(port=port, baudrate=9600, timeout=2)
        assert c.connect()
        r = c.read_input_registers(52, count=2, device_id=3)  # SDM630 total W, PV meter
        assert not r.isError(), r
        w = struct.unpack(">f", struct.pack(">HH", *r.registers))[0]
        assert abs(w - 3000) < 1
        r = c.read_holding_registers(40000, count=14, device_id=1)  # the PCS block
        assert not r.isError() and len(r.registers) == 14
        c.close()
    finally:
        p.terminate()
        p.wait(5)


def _subscriber(broker, topic):
    """paho client collecting (topic, payload) into a queue."""
    import queue
    import paho.mqtt.client as paho
    q = queue.Queue()
    ready = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, pr=None: (cl.subscribe(topic, 1), ready.set())
    c.on_message = lambda cl, u, m: q.put((m.topic, m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert ready.wait(10)
    return c, q


def test_link_telemetry_reaches_mosquitto(tmp_path):
    # the app with a link configured publishes telemetry through the real broker
    from edgegw.mosq import Mosquitto
    with Mosquitto() as broker:
        c, q = _subscriber(broker, "edgegw/gw-sil/#")
        cfg = site_config(link={"host": broker.host, "port": broker.port}, status_s=2)
        cfg["device_id"] = "gw-sil"
        try:
            with VirtualGateway(str(tmp_path), cfg, _sim(), speed=SPEED) as gw:
                end = time.monotonic() + 20
                rec = None
                while rec is None and time.monotonic() < end:
                    try:
                        t, p = q.get(timeout=1)
                    except Exception:
                        continue
                    if t == "edgegw/gw-sil/telemetry" and json.loads(p).get("pv_w") is not None:
                        rec = json.loads(p)
                assert rec is not None, "no telemetry with site values"
                assert abs(rec["pv_w"] - 3000) <= 1 and rec["soc_cpct"] is not None
                s = gw.status(False)
                assert s["link"]["connected"] and s["link"]["state"] in (
                    "ONLINE", "GRACE", "FALLBACK", "RECOVERING")
                assert not s["errors"], s["errors"]
        finally:
            c.loop_stop()
            c.disconnect()


EDGEGW = os.path.join(REPO, ".venv", "bin", "edgegw")


def _wait_booted(gw, device_id, timeout=20, rebooted=True):
    if rebooted:
        gw.expect(r"soft reboot[\s\S]*edgegw: config from", timeout)
    return gw.wait(lambda s: s.get("device_id") == device_id and s["running"]
                   and s["buses"]["bus1"]["bms"]["ok"] > 0, timeout, points=False)


def test_soft_reset_boots_the_pushed_config(tmp_path):
    """`config push --reset` (Ctrl-D at the friendly REPL) and machine.soft_reset(): the
    virtual gateway boots again from its filesystem, as a board does: the pushed config
    on trial, the same REPL port for mpremote, the same buses."""
    cfg = _cfg()
    cfg["device_id"] = "gw-before"
    new = _cfg()
    new["device_id"] = "gw-pushed"
    new["control"] = dict(new["control"], hold_w=0)
    f = tmp_path / "new.json"
    f.write_text(json.dumps(new))
    with VirtualGateway(str(tmp_path / "gw"), cfg, _sim(), speed=SPEED) as gw:
        _wait_booted(gw, "gw-before", rebooted=False)
        r = subprocess.run([EDGEGW, "config", "push", str(f), "--port", gw.repl_port,
                            "--reset"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        s = _wait_booted(gw, "gw-pushed")
        assert s["config"] == "config.json" and s["config_trial"]["state"] == "trial", s
        assert gw.alive() and gw.resets == 1
        assert gw.sim.p_set_w == 0 or gw.wait(lambda s: gw.sim.p_set_w == 0, 20, points=False)
        # machine.soft_reset() through mpremote before the trial confirmed it: the trial
        # failed, the last good config boots (the rollback a board does)
        subprocess.run([MPREMOTE, "connect", gw.repl_port, "resume", "exec",
                        "import machine\nmachine.soft_reset()"],
                       capture_output=True, text=True, timeout=30)
        s = _wait_booted(gw, "gw-before")
        assert s["config"] == "config.last_good.json" and gw.alive() and gw.resets == 2
        assert s["config_trial"]["state"] == "failed", s["config_trial"]
        r = subprocess.run([MPREMOTE, "connect", gw.repl_port, "resume", "exec",
                            "from edgefw import app\nprint(app.status(False)['device_id'])"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "gw-before", r


def _run_once(path, burn):
    # a morning ramp: PV rises past the load, the dispatcher charges and bounds export
    sim = SimSite(t0=1782000000 + 9 * 3600, pv=[(9 * 3600, 1000), (9 * 3600 + 600, 5000)],
                  it=[(9 * 3600, 2500), (9 * 3600 + 300, 1500)], aux=300, soc_cpct=5000)
    cfg = site_config(period_ms=1000)
    hog = None
    try:
        with VirtualGateway(path, cfg, sim, speed=SPEED) as gw:
            if burn:
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            gw.run_to(sim.t + 60)
            s = gw.status(False)
            polls = _polls(s)
            return (list(sim.writes), dict(sim.e), sim.summary(), polls, s["sp_w"])
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def test_same_answers_on_a_busy_host(tmp_path):
    """Lockstep: two runs of the same site, the second beside a CPU-burning process,
    give the same PCS writes at the same site times, the same energies and the same poll
    counts at the same instant."""
    a = _run_once(str(tmp_path / "a"), False)
    b = _run_once(str(tmp_path / "b"), True)
    assert len(a[0]) > 5, a[0]   # the dispatcher did act
    assert a[0] == b[0]
    assert a[1:] == b[1:]
