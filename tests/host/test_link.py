"""The northbound link against a real mosquitto: the firmware MQTT client and Link run
under MicroPython as real processes (host/edgegw/link_driver.py), paho plays the cloud."""
import json
import os
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest

# (not `from conftest import`: with tests/dual collected too, that name can be the other one)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.join(REPO, "host"))
from edgegw.linkproc import LinkProc as Driver  # noqa: E402
from edgegw.mosq import Mosquitto  # noqa: E402


class Cloud:
    """paho client subscribed to a topic filter; messages collected in order."""

    def __init__(self, broker, filt):
        self.msgs = []
        self.cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cloud-%d" % id(self))
        self.c.on_message = self._on
        self.ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe(filt, 1), None)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.broker = broker
        self.c.reconnect_delay_set(0.05, 0.5)
        self.connect()
        self.c.loop_start()

    def connect(self):
        self.ready.clear()
        self.c.connect(self.broker.host, self.broker.port, keepalive=10)

    def wait_ready(self, timeout=5):
        assert self.ready.wait(timeout), "cloud client did not subscribe"

    def _on(self, c, u, msg):
        with self.cv:
            self.msgs.append((msg.topic, msg.payload))
            self.cv.notify_all()

    def wait(self, pred, timeout=10.0, what="message"):
        t_end = time.monotonic() + timeout
        with self.cv:
            i = 0
            while True:
                while i < len(self.msgs):
                    if pred(*self.msgs[i]):
                        return self.msgs[i]
                    i += 1
                left = t_end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s within %.1f s; got %s"
                                         % (what, timeout, self.msgs[-10:]))
                self.cv.wait(left)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker():
    with Mosquitto() as m:
        yield m


def test_mqtt_client_publish_subscribe_reconnect(broker):
    cloud = Cloud(broker, "drv/#")
    cloud.wait_ready()
    drv = Driver("mqtt", broker.host, str(broker.port), "2", "50")
    try:
        drv.wait(lambda d: d["ev"] == "connected", what="connect")
        done = drv.wait(lambda d: d["ev"] == "done", what="all acked")
        assert done["acked"] == 50
        cloud.c.publish("drv/in", b"hello", 1)
        cloud.wait(lambda t, p: t == "drv/echo" and p == b"hello", what="echo")
        # a packet of many reads (an OTA offer is ~7.7 KB) read into one buffer, then a
        # small one right behind it: both whole, the framing intact
        big = bytes(range(256)) * 36
        cloud.c.publish("drv/in", big, 1)
        cloud.c.publish("drv/in", b"after", 1)
        cloud.wait(lambda t, p: t == "drv/echo" and p == big, what="big echo")
        cloud.wait(lambda t, p: t == "drv/echo" and p == b"after", what="echo after big")
        outs = [int(p) for t, p in cloud.msgs if t == "drv/out"]
        assert outs == list(range(50))
        # idle for 2 keepalives: pings keep the connection up
        time.sleep(4.2)
        assert not [d for d in drv.lines if d["ev"] == "disconnected"]
        broker.stop()
        drv.wait(lambda d: d["ev"] == "disconnected", timeout=3, what="disconnect")
        broker.start()
        drv.wait(lambda d: d["ev"] == "connected", timeout=5, what="reconnect")
        cloud.wait_ready()
        time.sleep(0.3)  # the driver's SUBSCRIBE leaves right after its CONNACK
        cloud.c.publish("drv/in", b"again", 1)
        cloud.wait(lambda t, p: t == "drv/echo" and p == b"again", what="echo after restart")
        # an unclean loss publishes the retained will
        cloud2 = Cloud(broker, "drv/status")
        cloud2.wait_ready()
        drv.kill()
        cloud2.wait(lambda t, p: p == b"offline", what="last will")
        cloud2.close()
    finally:
        drv.kill()
        cloud.close()


# ---- the Link (firmware/edgefw/link.py) under MicroPython -------------------------------

from edgefw import auth  # noqa: E402
from protocols import topics as T  # noqa: E402

KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
DEV = "gw-t"
KEEPALIVE_S = 2


def link_cfg(broker, tmp_path, limits=None, **kw):
    lk = {"host": broker.host, "port": broker.port, "keepalive_s": KEEPALIVE_S, "grace_s": 1,
          "loss_s": 0, "recover_s": 2, "ramp_w_s": 5000, "telemetry_ms": 100,
          "backoff_min_ms": 100, "backoff_max_ms": 1000, "key": KEY_HEX, "ring_kb": 64}
    lk.update(kw)
    cfg = {"device_id": DEV, "fs_dir": str(tmp_path / "fs"), "link": lk,
           "limits": limits or {"pcs_charge_max_w": 5000, "pcs_discharge_max_w": 5000}}
    p = tmp_path / "link.json"
    p.write_text(json.dumps(cfg))
    return str(p)


class CloudEMS(Cloud):
    """The cloud stand-in: signs commands, dedups what the gateway sends."""

    def __init__(self, broker):
        super().__init__(broker, "edgegw/%s/#" % DEV)
        self.c.on_disconnect = lambda *a: self.ready.clear()
        self.seq = int(time.time() * 1000)

    def command(self, leaf, payload, sign=True, seq=None, exp_in=60, tamper=None):
        now = int(time.time())
        if seq is None:
            self.seq += 1
            seq = self.seq
        cmd = dict(payload, seq=seq, ts=now, exp=now + exp_in)
        if sign:
            auth.sign(KEY, DEV, T.COMMANDS[leaf], cmd)
        if tamper:
            cmd.update(tamper)
        self.c.publish(T.topic(DEV, leaf), json.dumps(cmd), 1)
        return cmd

    def ack_for(self, seq, reason=None, timeout=5):
        def pred(t, p):
            if not t.endswith("/ack"):
                return False
            a = json.loads(p)
            return a["seq"] == seq and (reason is None or a["reason"] == reason)
        return json.loads(self.wait(pred, timeout, "ack for seq %s %s" % (seq, reason or ""))[1])

    def records(self):
        """Telemetry and events in arrival order: (seq, dict)."""
        out = []
        for t, p in list(self.msgs):
            if t.endswith("/telemetry") or t.endswith("/events"):
                d = json.loads(p)
                out.append((d["seq"], d))
        return out


def dedup_report(recs):
    seen = set()
    first = []
    dup = 0
    for s, d in recs:
        if s in seen:
            dup += 1
        else:
            seen.add(s)
            first.append(s)
    lost = (max(seen) - min(seen) + 1 - len(seen)) if seen else 0
    in_order = all(first[i] < first[i + 1] for i in range(len(first) - 1))
    return {"received": len(first), "dup": dup, "lost": lost, "in_order": in_order}


def state_at(drv, st, after=0.0, timeout=10):
    return drv.wait(lambda d: d["ev"] == "state" and d["state"] == st and d["_t"] >= after,
                    timeout, "state %s" % st)


def test_link_commands_outage_and_store_and_forward(broker, tmp_path):
    cloud = CloudEMS(broker)
    cloud.wait_ready()
    drv = Driver("link", link_cfg(broker, tmp_path))
    try:
        state_at(drv, "RECOVERING")
        sp = cloud.command(T.CMD_SETPOINT, {"p_w": 1500})
        a = cloud.ack_for(sp["seq"])
        assert a["ok"] and a["reason"] == "ok" and a["kind"] == "setpoint"
        # bumpless: from the local 0 W up to 1500 W, then ONLINE
        state_at(drv, "ONLINE")
        # the driver prints the step's setpoint after the state change it caused: on a
        # busy host the 1500 W line can follow the ONLINE line a moment later
        sps = [d["w"] for d in drv.lines if d["ev"] == "sp" and d["w"] is not None]
        if sps[-1] != 1500:
            drv.wait(lambda d: d["ev"] == "sp" and d["w"] == 1500, 10, "sp 1500")
        sps = [d["w"] for d in drv.lines if d["ev"] == "sp" and d["w"] is not None]
        assert sps[-1] == 1500 and sps[0] < 1500
        # rejections, each acked with its reason; the applied setpoint does not move
        c = cloud.command(T.CMD_SETPOINT, {"p_w": 100}, sign=False)
        assert cloud.ack_for(c["seq"])["reason"] == "unsigned"
        c = cloud.command(T.CMD_SETPOINT, {"p_w": 100}, tamper={"p_w": 4000})
        assert cloud.ack_for(c["seq"])["reason"] == "bad_sig"
        c = cloud.command(T.CMD_SETPOINT, {"p_w": 100}, exp_in=-1)
        assert cloud.ack_for(c["seq"])["reason"] == "stale"
        cloud.c.publish(T.topic(DEV, T.CMD_SETPOINT), json.dumps(sp), 1)  # replay
        assert cloud.ack_for(sp["seq"], "replayed")["ok"] is False
        c = cloud.command(T.CMD_SETPOINT, {"p_w": 6000})  # beyond the PCS rating
        a = cloud.ack_for(c["seq"])
        assert a["reason"] == "out_of_bounds" and "p_w" in a["detail"]
        c = cloud.command(T.CMD_SCHEDULE, {"windows": [{"t0": 1, "t1": 0}]})
        assert cloud.ack_for(c["seq"])["reason"] == "invalid"
        c = cloud.command(T.CMD_SCHEDULE, {"windows": [{"t0": 0, "t1": 2 ** 33, "soc_cpct": 9000}]})
        assert cloud.ack_for(c["seq"])["ok"]
        c = cloud.command(T.FORECAST, {"t0": 0, "step_s": 60, "load_w": [1, 2], "measured_w": 1,
                                       "source": "test"})
        assert cloud.ack_for(c["seq"])["ok"]
        c = cloud.command(T.CMD_CONFIG, {"config": {"buses": "nope"}})
        a = cloud.ack_for(c["seq"])
        assert a["reason"] == "invalid" and a["detail"].startswith("buses")
        assert [d["w"] for d in drv.lines if d["ev"] == "sp"][-1] == 1500

        # broker dies: GRACE holds the cloud setpoint, FALLBACK within keepalive x 1.5
        time.sleep(0.3)
        t_kill = time.monotonic()
        broker.stop()
        state_at(drv, "GRACE", t_kill)
        fb = state_at(drv, "FALLBACK", t_kill)
        assert fb["_t"] - t_kill <= KEEPALIVE_S * 1.5
        drv.wait(lambda d: d["ev"] == "sp" and d["w"] is None, 2, "local dispatch")
        time.sleep(1.0)  # telemetry of the outage goes to the ring
        drv.send("hold")  # so the cloud is subscribed again before the gateway drains
        drv.wait(lambda d: d["ev"] == "hold")
        broker.start()
        cloud.wait_ready(10)
        t_back = time.monotonic()
        drv.send("run")
        state_at(drv, "RECOVERING", t_back)
        state_at(drv, "ONLINE", t_back)
        # everything of the outage arrives, in order, once after dedup
        time.sleep(0.5)
        drv.send("stats")
        st = drv.wait(lambda d: d["ev"] == "stats")["stats"]
        assert st["ring_n"] == 0 and st["ring_dropped"] == 0
        recs = cloud.records()
        rep = dedup_report(recs)
        assert rep["lost"] == 0 and rep["in_order"], rep
        outage = [s for s, d in recs if d.get("state") in ("GRACE", "FALLBACK")
                  and "grid_w" in d]
        assert len(set(outage)) >= 8
        assert recs[0][0] == 0  # from the very first record of this gateway's life
        bye = drv.quit()
        assert bye["mem_peak"] > 0
    finally:
        drv.kill()
        cloud.close()


def test_cli_setpoint_watch_collect(broker, tmp_path):
    from click.testing import CliRunner
    from edgegw.cmd_link import Collector, cli
    col = Collector("%s:%d" % (broker.host, broker.port), DEV)
    drv = Driver("link", link_cfg(broker, tmp_path))
    try:
        state_at(drv, "RECOVERING")
        b = ["--broker", "%s:%d" % (broker.host, broker.port), "--device", DEV]
        r = CliRunner().invoke(cli, ["setpoint", "-1200", "--key", KEY_HEX] + b)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["ok"] is True
        drv.wait(lambda d: d["ev"] == "sp" and d["w"] == -1200, 5, "setpoint -1200")
        r = CliRunner().invoke(cli, ["setpoint", "100", "--key", "ab" * 16] + b)
        assert r.exit_code == 2 and "bad_sig" in r.output
        sched = tmp_path / "s.json"
        sched.write_text('[{"t0": 0, "t1": 10, "soc_cpct": 12000}]')
        r = CliRunner().invoke(cli, ["schedule", str(sched), "--key", KEY_HEX] + b)
        assert r.exit_code == 2 and "windows[0].soc_cpct" in r.output
        r = CliRunner().invoke(cli, ["forecast", "--load-w", "400,900", "--step-s", "60",
                                     "--key", KEY_HEX] + b)
        assert r.exit_code == 0, r.output
        # a tariff: checked here (field named), signed without its free text, and this
        # link-only driver (no dispatcher) says it cannot take one
        tf = tmp_path / "t.json"
        tf.write_text('{"periods": [{"name": "flat", "price_cfen": -1}], "seasons": []}')
        r = CliRunner().invoke(cli, ["tariff", str(tf), "--key", KEY_HEX] + b)
        assert r.exit_code == 2 and "tariff.periods[0].price_cfen" in r.output, r.output
        r = CliRunner().invoke(cli, ["tariff", "--key", KEY_HEX] + b)
        assert r.exit_code == 2 and "FILE or --clear" in r.output, r.output
        gd = os.path.join(REPO, "scenarios", "tariffs", "guangdong_1_10kv.json")
        r = CliRunner().invoke(cli, ["tariff", gd, "--key", KEY_HEX] + b)
        assert r.exit_code == 2 and "no local dispatch" in r.output, r.output
        r = CliRunner().invoke(cli, ["watch", "--json", "--count", "2", "--timeout", "5"] + b)
        lines = [json.loads(x) for x in r.output.splitlines()]
        assert len(lines) == 2 and lines[0]["device"] == DEV
        time.sleep(0.5)
        rep = col.report()
        assert rep["received"] > 5 and rep["lost"] == 0 and rep["out_of_order"] == 0
        drv.quit()
    finally:
        drv.kill()
        col.close()


def test_vgw_signed_setpoint_reaches_pcs_unsigned_does_not(broker, tmp_path):
    """The whole firmware (virtual gateway, 10x site clock) with the link on: a signed cloud
    setpoint is written to the simulated PCS over RS-485, an unsigned one is not."""
    from edgegw.cmd_link import send_command
    from edgegw.simsite import SimSite
    from edgegw.vgw import VirtualGateway, site_config
    cfg = site_config(link={"host": broker.host, "port": broker.port, "key": KEY_HEX,
                            "keepalive_s": KEEPALIVE_S, "recover_s": 600,
                            "ramp_w_s": 100000})
    cfg["device_id"] = DEV
    sim = SimSite(pv=0, it=1500, aux=200, soc_cpct=6000)
    b = "%s:%d" % (broker.host, broker.port)
    with VirtualGateway(str(tmp_path / "gw"), cfg, sim, speed=10) as gw:
        s = gw.wait(lambda s: (s.get("link") or {}).get("state") == "RECOVERING", 20,
                    points=False)
        cmd, a = send_command(b, DEV, T.CMD_SETPOINT, {"p_w": 1234}, KEY, ts=s["t"],
                              exp_s=3000)
        assert a is not None and a["ok"], a
        gw.wait(lambda s: s["link"]["state"] == "ONLINE" and s["sp_src"] == "cloud", 20,
                points=False)
        t_end = time.monotonic() + 10
        while sim.p_set_w != 1234 and time.monotonic() < t_end:
            time.sleep(0.2)
        assert sim.p_set_w == 1234  # on the wire: the PCS register holds the cloud value
        s = gw.status(points=False)
        cmd, a = send_command(b, DEV, T.CMD_SETPOINT, {"p_w": -2000}, KEY, ts=s["t"],
                              exp_s=3000, sign=False)
        assert a is not None and a["reason"] == "unsigned"
        time.sleep(1.5)  # 15 site seconds of control
        assert sim.p_set_w == 1234


def _certs(d):
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    import shutil
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d.mkdir()

    def ossl(*a):
        subprocess.run(["openssl"] + list(a), cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=edgegw-test-ca")
    ossl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext")
    ossl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2",
         "-subj", "/CN=someone-else")
    # mosquitto started as root drops to its own user: it must read these
    for p in [d] + list(d.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return d


def test_mqtt_client_tls_verifies_the_broker():
    import pathlib
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="edgegw-tls-")  # not under pytest's private tmp dir
    os.chmod(top, 0o755)
    try:
        _tls_check(_certs(pathlib.Path(top) / "tls"))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _tls_check(d):
    conf = "certfile %s\nkeyfile %s\n" % (d / "srv.pem", d / "srv.key")
    with Mosquitto(extra_conf=conf) as m:
        drv = Driver("mqtt", m.host, str(m.port), "5", "20", str(d / "ca.pem"))
        try:
            assert drv.wait(lambda x: x["ev"] == "done", what="20 QoS 1 over TLS")["acked"] == 20
        finally:
            drv.kill()
        # a broker certificate from another CA: no connection, and the error says why
        drv = Driver("mqtt", m.host, str(m.port), "5", "1", str(d / "other.pem"))
        try:
            f = drv.wait(lambda x: x["ev"] == "fail", what="a refused handshake")
            assert f["error"].startswith("TLS: the broker's certificate was refused"), f
            assert "not correctly signed" in f["error"], f
            assert not [x for x in drv.lines if x["ev"] in ("connected", "done")], drv.lines
        finally:
            drv.kill()
        # TLS without a CA file (issue 14 item 8): not verified = not connected
        drv = Driver("mqtt", m.host, str(m.port), "5", "1", "noca")
        try:
            f = drv.wait(lambda x: x["ev"] == "fail", what="a refusal without a CA file")
            assert f["error"].startswith("TLS: no CA file to verify the broker"), f
            time.sleep(0.5)
            assert not [x for x in drv.lines if x["ev"] in ("connected", "done")], drv.lines
        finally:
            drv.kill()
        # link.insecure: connects without the check (the Link reports it, below)
        drv = Driver("mqtt", m.host, str(m.port), "5", "3", "insecure")
        try:
            assert drv.wait(lambda x: x["ev"] == "done", what="3 QoS 1 over unverified TLS")[
                "acked"] == 3
        finally:
            drv.kill()


def test_link_tls_mode_in_status_and_boot_errors(tmp_path):
    # the Link names its TLS mode in stats() (app.status()["link"]["tls"]) and an
    # unverified or unusable TLS link gets a warning the app reports at boot
    from edgefw import link
    base = {"host": "127.0.0.1", "port": 1}
    for extra, mode, warn in (({}, "off", None),
                              ({"tls": True, "ca": "ca.der"}, "verified", None),
                              ({"tls": True}, "no CA", "TLS: no CA file"),
                              ({"tls": True, "insecure": True}, "INSECURE",
                               "TLS without verifying the broker's certificate")):
        lk = link.Link(dict(base, **extra), DEV, str(tmp_path / mode.replace(" ", "_")))
        assert lk.stats()["tls"] == mode
        w = lk.tls_warning()
        assert (w is None) if warn is None else w.startswith(warn), (mode, w)
        if warn:  # queued for the cloud as an event, too
            assert len(lk.outbox.ring) == 1
    assert link.validate_link_cfg({"host": "h", "insecure": True}) == [
        "link.insecure: true only with tls true (it turns off the broker's certificate "
        "check)"]
    assert link.validate_link_cfg({"host": "h", "tls": True, "insecure": 1}) == [
        "link.insecure: 1 is not true/false"]


def test_link_hung_broker_found_by_keepalive(broker, tmp_path):
    """A broker that hangs with its sockets open (SIGSTOP): no socket error, only the
    unanswered keepalive ping shows the loss; FALLBACK within keepalive x 1.5."""
    col = CloudEMS(broker)
    col.wait_ready()
    drv = Driver("link", link_cfg(broker, tmp_path, grace_s=0, recover_s=1))
    try:
        state_at(drv, "ONLINE")
        time.sleep(0.5)
        t0 = time.monotonic()
        broker.pause()
        fb = state_at(drv, "FALLBACK", t0)
        assert fb["_t"] - t0 <= KEEPALIVE_S * 1.5
        time.sleep(0.5)
        t1 = time.monotonic()
        broker.resume()  # the paho cloud client kept its session: no re-subscribe race
        state_at(drv, "ONLINE", t1, timeout=15)
        time.sleep(1.0)
        drv.send("mute")
        time.sleep(0.5)
        drv.send("stats")
        st = drv.wait(lambda d: d["ev"] == "stats")["stats"]
        assert st["ring_n"] == 0
        rep = dedup_report(col.records())
        assert rep["lost"] == 0 and rep["in_order"], rep
        assert rep["received"] == st["seq"]
        drv.quit()
    finally:
        drv.kill()
        col.close()


# ---- review findings 12 and the clock-skew check: Link in-process (no broker needed) -----

def _offline_link(tmp_path, limits):
    from edgefw import link
    return link.Link({"key": KEY_HEX}, DEV, str(tmp_path / "fs"), limits)


_SEQ = [int(time.time() * 1000)]


def _deliver(lk, leaf, payload, ts=None, exp_in=60):
    from edgefw import clock
    now = clock.time()
    ts = now if ts is None else ts
    _SEQ[0] += 1
    cmd = dict(payload, seq=_SEQ[0], ts=ts, exp=ts + exp_in)
    auth.sign(KEY, DEV, T.COMMANDS[leaf], cmd)
    before = dict(lk.n)
    lk._on_message(T.topic(DEV, leaf), json.dumps(cmd).encode(), False)
    return lk.n["cmd_ok"] > before["cmd_ok"]


def test_pcs_limit_zero_means_zero_watts(tmp_path):
    lk = _offline_link(tmp_path, {"pcs_charge_max_w": 0, "pcs_discharge_max_w": 3000})
    assert (lk.sp_lo, lk.sp_hi) == (0, 3000)
    assert not _deliver(lk, T.CMD_SETPOINT, {"p_w": -1})      # any charge is out of bounds
    assert _deliver(lk, T.CMD_SETPOINT, {"p_w": 0})
    assert _deliver(lk, T.CMD_SETPOINT, {"p_w": 3000})
    assert not _deliver(lk, T.CMD_SETPOINT, {"p_w": 3001})
    lk = _offline_link(tmp_path, {"pcs_charge_max_w": 0, "pcs_discharge_max_w": 0})
    assert (lk.sp_lo, lk.sp_hi) == (0, 0)
    # an absent limit falls back to link.sp_max_w
    lk = _offline_link(tmp_path, {})
    assert (lk.sp_lo, lk.sp_hi) == (-1000000, 1000000)


def test_pcs_limit_zero_acks_out_of_bounds(broker, tmp_path):
    cloud = CloudEMS(broker)
    cloud.wait_ready()
    drv = Driver("link", link_cfg(broker, tmp_path,
                                  {"pcs_charge_max_w": 0, "pcs_discharge_max_w": 2000}))
    try:
        state_at(drv, "RECOVERING")
        c = cloud.command(T.CMD_SETPOINT, {"p_w": -500})
        a = cloud.ack_for(c["seq"])
        assert a["reason"] == "out_of_bounds" and a["detail"].startswith("p_w"), a
        c = cloud.command(T.CMD_SETPOINT, {"p_w": 1500})
        assert cloud.ack_for(c["seq"])["ok"]
        drv.quit()
    finally:
        drv.kill()
        cloud.close()


def test_setpoint_from_a_clock_ahead_of_the_gateway_lives_exp_minus_ts(tmp_path):
    # the sender's clock an hour ahead of the gateway's (or the gateway's RTC behind):
    # the setpoint holds its own lifetime (exp - ts) from receipt, not an hour more
    from edgefw import clock, link
    lk = _offline_link(tmp_path, None)
    now = clock.time()
    assert _deliver(lk, T.CMD_SETPOINT, {"p_w": 100}, ts=now + 3600, exp_in=30)
    assert now + 29 <= lk.hold.sp["exp"] <= now + 32
    lk.state = link.ONLINE
    assert lk.setpoint(now + 10) == 100 and lk.setpoint(now + 33) is None
    r = now - clock.EPOCH       # the control loop's time base (clock.rel(), issue 19)
    assert lk.setpoint(r + 10, None, True) == 100 and lk.setpoint(r + 33, None, True) is None
    # a normal command: exp as sent
    assert _deliver(lk, T.CMD_SETPOINT, {"p_w": 200}, ts=now - 5, exp_in=30)
    assert lk.hold.sp["exp"] == now + 25
    # a command already expired on the gateway's clock is still refused as stale
    assert not _deliver(lk, T.CMD_SETPOINT, {"p_w": 300}, ts=now - 100, exp_in=30)


def test_signed_tariff_is_checked_kept_and_handed_over_again_after_a_reboot(tmp_path):
    # cmd/tariff: checked on the gateway as site.tariff would be (field named), kept in
    # link_tariff.json, in force in the dispatcher until exp; a gateway rebooted while
    # offline takes what it kept as soon as its clock is valid
    from edgefw import app, clock, dispatch
    from edgefw import tariff as fwtariff
    with open(os.path.join(REPO, "scenarios", "tariffs", "guangdong_1_10kv.json")) as f:
        gd = {k: v for k, v in json.load(f).items() if k not in ("name", "note")}  # as the CLI

    def gateway():
        d = dispatch.Dispatcher({"battery_wh": 100000, "pcs_w": 50000})
        lk = _offline_link(tmp_path, None)
        errs = []
        cin = app._CloudIn(d, errs.append)
        lk.on_input = cin.input
        lk.check_tariff = cin.check_tariff
        return d, lk, errs
    d, lk, errs = gateway()
    assert d.tou is None
    bad = dict(gd, periods=[dict(gd["periods"][0], price_cfen=-5)] + gd["periods"][1:])
    assert not _deliver(lk, T.CMD_TARIFF, {"tariff": bad})
    assert not _deliver(lk, T.CMD_TARIFF, {"tariff": dict(gd, export_cfen=3000)})  # no export
    assert not _deliver(lk, T.CMD_TARIFF, {"tariff": "cheap"})
    assert d.tou is None and not os.path.exists(str(tmp_path / "fs" / "link_tariff.json"))
    assert _deliver(lk, T.CMD_TARIFF, {"tariff": gd}, exp_in=86400)
    assert isinstance(d.tou, fwtariff.TouRule) and not errs
    assert d.tou_until == clock.time() + 86400 - clock.EPOCH
    with open(str(tmp_path / "fs" / "link_tariff.json")) as f:
        assert json.load(f)["tariff"]["periods"] == gd["periods"]
    # a schedule and a forecast are kept the same way
    now = clock.time()
    assert _deliver(lk, T.CMD_SCHEDULE, {"windows": [{"t0": now, "t1": now + 3600,
                                                      "soc_cpct": 8000}]}, exp_in=7200)
    assert _deliver(lk, T.FORECAST, {"t0": now, "step_s": 300, "load_w": [900, 1200],
                                     "pv_w": [0, 4000], "aux_w": [3000, 3100],
                                     "measured_w": 800, "source": "t"}, exp_in=7200)
    assert d.schedule.n == 1 and d.forecast.n == 2
    # reboot: a new dispatcher and link on the same filesystem, no broker
    d, lk, errs = gateway()
    assert d.tou is None and d.schedule.n == 0 and d.forecast.n == 0 and lk.kept.pending
    lk.poll(clock.ticks_ms())
    assert isinstance(d.tou, fwtariff.TouRule) and not lk.kept.pending and not errs
    assert d.schedule.n == 1 and d.schedule.soc[0] == 8000
    assert d.forecast.n == 2 and d.forecast.load_w[1] == 1200
    assert d.forecast.n_pv == 2 and d.forecast.pv_w[1] == 4000 and d.forecast.aux_w[1] == 3100
    # back to the configured (here: none) before the expiry
    assert _deliver(lk, T.CMD_TARIFF, {"tariff": None})
    assert d.tou is None
