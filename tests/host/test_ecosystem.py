"""Outputs the ecosystem reads (issue 18 item 3), with real parts: the whole firmware on the
virtual gateway publishes Home Assistant discovery and telemetry to a real mosquitto; the
collector writes InfluxDB line protocol and serves Prometheus metrics, scraped over HTTP;
the Grafana dashboard only asks for metrics the exporter makes."""
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as paho
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "host"))
from edgegw import exporters  # noqa: E402
from edgegw.cmd_link import Collector  # noqa: E402
from edgegw.mosq import Mosquitto, free_port  # noqa: E402
from edgefw import hadisc  # noqa: E402
from protocols import topics as T  # noqa: E402

DEV = "gw-eco"
EDGEGW = os.path.join(REPO, ".venv", "bin", "edgegw")


@pytest.fixture
def broker():
    with Mosquitto() as m:
        yield m


class Sub:
    """paho subscriber keeping (topic, payload, retain) in order."""

    def __init__(self, m, filt):
        self.msgs = []
        self.cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(filt, 1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on
        self.c.connect(m.host, m.port)
        self.c.loop_start()
        assert ready.wait(5)

    def _on(self, c, u, msg):
        with self.cv:
            self.msgs.append((msg.topic, msg.payload, msg.retain))
            self.cv.notify_all()

    def wait_n(self, pred, n, timeout=30):
        t_end = time.monotonic() + timeout
        with self.cv:
            while True:
                got = [x for x in self.msgs if pred(x)]
                if len(got) >= n:
                    return got
                left = t_end - time.monotonic()
                assert left > 0, "only %d of %d messages: %s" % (len(got), n, self.msgs[-5:])
                self.cv.wait(left)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _field(rec, path):
    v = rec
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v:
            return KeyError
        v = v[p]
    return v


def _scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    vals = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            vals[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return vals


def test_gateway_announces_itself_to_ha_and_the_exporters_serve_its_telemetry(broker,
                                                                              tmp_path):
    from edgegw.simsite import SimSite
    from edgegw.vgw import VirtualGateway, site_config
    cfg = site_config(link={"host": broker.host, "port": broker.port, "keepalive_s": 5})
    cfg["device_id"] = DEV
    cfg["status_s"] = 2
    b = "%s:%d" % (broker.host, broker.port)
    influx = io.StringIO()
    prom = exporters.PromSink()
    port = free_port()
    prom.serve(port)
    col = Collector(b, DEV, None, [exporters.InfluxSink(influx), prom])
    prom.collector = col
    tel = Sub(broker, T.topic(DEV, T.TELEMETRY))
    try:
        with VirtualGateway(str(tmp_path / "gw"), cfg, SimSite(pv=2000, it=1500, aux=200,
                                                              soc_cpct=6000), speed=10):
            recs = tel.wait_n(lambda x: True, 3)
        # discovery is retained: a client subscribing after the gateway left gets it all
        ha = Sub(broker, T.HA_PREFIX + "/#")
        got = ha.wait_n(lambda x: True, len(hadisc.POINTS), 10)
        ha.close()
        # ... including the last will: status offline is retained, so HA shows unavailable
        time.sleep(0.3)
        sc = _scrape(port)
    finally:
        tel.close()
        col.close()
        prom.close()

    rec = json.loads(recs[-1][1])
    # (topics.check_telemetry calls the documented pv_limit_w null "not an integer W":
    # reported, not changed here)
    assert T.check_telemetry(rec) == []
    topics = sorted(t for t, p, r in got)
    assert topics == sorted(T.ha_config_topic(T.HA_PREFIX, DEV, p[0]) for p in hadisc.POINTS)
    assert all(r for t, p, r in got)    # retained
    for t, p, r in got:
        d = json.loads(p)
        for k in ("name", "unique_id", "state_topic", "value_template", "availability",
                  "device"):
            assert k in d, (t, k)
        assert d["state_topic"] == T.topic(DEV, T.TELEMETRY)
        assert d["availability"][0]["topic"] == T.topic(DEV, T.STATUS)
        # the field the template reads is in real telemetry (and in the shared list)
        path = re.search(r"value_json\.([a-z_.]+)", d["value_template"]).group(1)
        assert path in T.telemetry_fields(), path
        assert _field(rec, path) is not KeyError, (path, rec)
        if d.get("state_class") == "measurement":
            assert isinstance(_field(rec, path), int), path

    # Influx: one line per kept telemetry record, the newest one matching what HA saw
    lines = influx.getvalue().splitlines()
    rep = col.report()
    assert rep["dup"] == 0 and rep["lost"] == 0
    last = [ln for ln in lines if ln.endswith(" %d" % rec["ts"])]
    assert last, lines[-3:]
    assert ("grid_w=%di" % rec["grid_w"]) in last[-1]
    assert last[-1].startswith("edgegw,device=%s,state=%s " % (DEV, rec["state"]))

    # Prometheus over HTTP: the newest record's values, per device
    newest = max((d for dv, s, d in col.first if d.get("soc_cpct") is not None
                  and "grid_w" in d), key=lambda d: d["seq"])
    lab = (("device", DEV),)
    assert sc[("edgegw_grid_w", lab)] == newest["grid_w"]
    assert sc[("edgegw_soc_cpct", lab)] == newest["soc_cpct"]
    assert sc[("edgegw_e_pv_wh", lab)] == newest["e"]["pv_wh"]
    assert sc[("edgegw_last_seen_ts", lab)] == newest["ts"]
    assert sc[("edgegw_link_state", (("device", DEV), ("state", newest["state"])))] == 1
    assert sc[("edgegw_collector_received", ())] == rep["received"]


def test_influx_line_protocol_exact():
    out = io.StringIO()
    s = exporters.InfluxSink(out)
    rec = {"seq": 7, "ts": 1764000000, "boot": 2, "state": "ONLINE", "grid_w": -120,
           "pv_w": 3400, "soc_cpct": 8320, "pv_limit_w": None, "safety": "",
           "flag": True, "e": {"pv_wh": 1234, "co2_kg": 5},
           "g": {"cur": {"cfe_cpct": 9100}}}
    s.record("site a,1", T.TELEMETRY, rec)
    s.record("site a,1", T.EVENTS, {"seq": 8, "ts": 1, "kind": "state"})  # not telemetry
    assert out.getvalue() == (
        # (Point sorts fields by name; integers get the i suffix; null, text, bool dropped)
        "edgegw,device=site\\ a\\,1,state=ONLINE boot=2i,e_co2_kg=5i,e_pv_wh=1234i,"
        "g_cur_cfe_cpct=9100i,grid_w=-120i,pv_w=3400i,seq=7i,soc_cpct=8320i 1764000000\n")


def test_dashboard_asks_only_for_exported_metrics():
    with open(os.path.join(REPO, "docs", "grafana", "edgegw.json")) as f:
        dash = json.load(f)
    exported = set(exporters.metric_names())
    used = set()
    for p in dash["panels"]:
        assert p["datasource"]["type"] == "prometheus"
        for t in p["targets"]:
            used |= set(re.findall(r"\bedgegw_[a-z0-9_]+", t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            used |= set(re.findall(r"\bedgegw_[a-z0-9_]+", q["query"]))
    assert used and used <= exported, used - exported
    # the main points all have a panel
    assert {"edgegw_grid_w", "edgegw_pv_w", "edgegw_it_w", "edgegw_bat_w",
            "edgegw_soc_cpct", "edgegw_headroom_w", "edgegw_e_pv_wh"} <= used


def test_collect_cli_influx_stdout_and_prometheus(broker):
    """The real command: line protocol on stdout, metrics over HTTP, report on stderr."""
    port = free_port()
    b = "%s:%d" % (broker.host, broker.port)
    p = subprocess.Popen([EDGEGW, "link", "collect", "--broker", b, "--influx", "-",
                          "--prometheus", str(port), "--duration", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        sc = {}
        t_end = time.monotonic() + 20
        seq = 0
        # until the collector is subscribed and has served the record over HTTP
        while sc.get(("edgegw_pv_w", (("device", "gw-c"),))) != 500 + seq:
            assert time.monotonic() < t_end, sc
            seq += 1
            rec = {"seq": seq, "ts": 1764000000 + seq, "boot": 1, "state": "FALLBACK",
                   "grid_w": 10, "pv_w": 500 + seq}
            pub.publish(T.topic("gw-c", T.TELEMETRY), json.dumps(rec), 1).wait_for_publish(5)
            time.sleep(0.3)
            try:
                sc = _scrape(port)
            except OSError:
                sc = {}
        pub.loop_stop()
        pub.disconnect()
    finally:
        p.terminate()     # SIGTERM: the collector reports and exits
        out, err = p.communicate(10)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == ("edgegw,device=gw-c,state=FALLBACK boot=1i,grid_w=10i,pv_w=%di,"
                         "seq=%di %d" % (500 + seq, seq, 1764000000 + seq))
    rep = json.loads(err.strip().splitlines()[-1])
    assert rep["dup"] == 0 and rep["received"] == len(lines)


@pytest.mark.parametrize("args,msg", [
    ([], "give at least one output"),
    (["--prometheus", "x9"], "--prometheus"),
    (["--prometheus", "70000"], "out of range"),
])
def test_collect_cli_mistakes_one_line(args, msg):
    r = subprocess.run([EDGEGW, "link", "collect", "--broker", "127.0.0.1:9"] + args,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert msg in r.stderr and "Traceback" not in r.stderr
