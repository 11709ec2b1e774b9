"""Compute-load tracker: real psutil figures on this machine, RAPL/NVML/IPMI where present
(their parsers against recorded input), queue -> forecast, integer smoothing, and publishing
to a real mosquitto received by an independent paho client."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import REPO
from edgefw import auth
from protocols import topics
from edgegw.tracker import Tracker
from edgegw.tracker import forecast as fc
from edgegw.tracker import publish as pub
from edgegw.tracker import queue as q
from edgegw.tracker import sources

EDGEGW = [sys.executable, "-m", "edgegw"]
KEY_HEX = "00112233445566778899aabbccddeeff"


def _edgegw(*args, timeout=30):
    return subprocess.run(EDGEGW + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


# ---- mosquitto ------------------------------------------------------------------------------

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture
def broker(tmp_path):
    try:
        from edgegw import mosq      # the link engineer's helper, when it is there
        if hasattr(mosq, "Mosquitto"):
            with mosq.Mosquitto() as m:
                yield "127.0.0.1:%d" % m.port
            return
    except ImportError:
        pass
    exe = "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        pytest.skip("mosquitto not installed (make setup installs it)")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % port)
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    t_end = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if p.poll() is not None or time.monotonic() > t_end:
                p.kill()
                pytest.fail("mosquitto did not start: %s" % p.stderr.read().decode())
            time.sleep(0.05)
    try:
        yield "127.0.0.1:%d" % port
    finally:
        p.terminate()
        p.wait(5)


class Sub:
    """Independent paho subscriber collecting JSON messages."""

    def __init__(self, broker, topic):
        host, port = broker.split(":")
        self.msgs = []
        self.ev = threading.Event()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._msg
        self.c.connect(host, int(port))
        self.c.loop_start()
        assert ready.wait(5), "subscription not acknowledged"

    def _msg(self, c, u, m):
        self.msgs.append((m.topic, json.loads(m.payload), m.retain))
        self.ev.set()

    def wait(self, n=1, timeout=10):
        t_end = time.monotonic() + timeout
        while len(self.msgs) < n and time.monotonic() < t_end:
            self.ev.wait(0.1)
            self.ev.clear()
        return self.msgs

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


# ---- sources: this machine --------------------------------------------------------------------

def test_sample_reports_real_psutil_utilisation():
    s = sources.Sampler(p_idle_w=100, p_max_w=300)
    # a real busy process: utilisation must show it (one core of N busy for the window)
    burn = subprocess.Popen([sys.executable, "-c",
                             "import time\nt=time.time()+1.2\nwhile time.time()<t: pass"])
    time.sleep(1.0)
    r = s.sample()
    burn.wait()
    ncpu = os.cpu_count() or 1
    assert r["util_pm"] >= 1000 // ncpu // 2, r
    assert 0 <= r["util_pm"] <= 1000
    cpu = [f for f in r["figures"] if f["name"] == "cpu"][0]
    assert cpu["source"] == "psutil" and cpu["util_pm"] == r["util_pm"]
    model = [f for f in r["figures"] if f["source"] == "model"][0]
    assert model["w"] == sources.model_w(r["util_pm"], 100, 300)
    assert 100 < model["w"] <= 300
    # every figure says where it came from; the total names its source
    assert all(f["source"] in ("psutil", "model", "rapl", "nvml", "ipmi") for f in r["figures"])
    assert r["source"] in ("ipmi", "rapl", "rapl+nvml", "model", "model+nvml")
    if r["source"].startswith("model"):
        assert r["measured_w"] >= model["w"]
        assert set(r["unavailable"]) >= {"ipmi", "rapl"}
    assert isinstance(r["measured_w"], int) and isinstance(r["ts"], int)


def test_cli_sample_json():
    p = _edgegw("tracker", "sample", "--json", "--window", "0.3", "--p-idle", "80",
                "--p-max", "200")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert 80 <= r["measured_w"] or r["source"] != "model"
    assert {f["source"] for f in r["figures"]} >= {"psutil", "model"}
    p = _edgegw("tracker", "sample")
    assert p.returncode == 0 and "measured" in p.stdout and "psutil" in p.stdout
    p = _edgegw("tracker", "sample", "--p-idle", "300", "--p-max", "100")
    assert p.returncode == 2 and "--p-idle/--p-max" in p.stderr and "Traceback" not in p.stderr


def test_model_w_integers():
    assert sources.model_w(0, 100, 300) == 100
    assert sources.model_w(1000, 100, 300) == 300
    assert sources.model_w(500, 100, 300) == 200
    assert sources.model_w(333, 0, 1000) == 333
    with pytest.raises(ValueError, match="util_pm"):
        sources.model_w(1001, 100, 300)


# ---- RAPL ---------------------------------------------------------------------------------------

def _zone(root, name, zname, e, rng):
    d = root / name
    d.mkdir()
    (d / "name").write_text(zname + "\n")
    (d / "energy_uj").write_text("%d\n" % e)
    (d / "max_energy_range_uj").write_text("%d\n" % rng)
    return d


def test_rapl_parser_and_wrap_on_a_sysfs_tree(tmp_path):
    rng = 262143328850
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1000000, rng)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5, rng)          # inside package-0: skipped
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", rng - 20000000, rng)
    (tmp_path / "intel-rapl-mmio:0").mkdir()                    # not a RAPL package zone
    t = [0]
    r = sources.Rapl(str(tmp_path), now_us=lambda: t[0])
    assert [(z[1], z[2]) for z in r.zones] == [("package-0", rng), ("package-1", rng)]
    assert r.read() == []                      # first reading only primes
    t[0] = 2000000                             # 2 s later
    (p0 / "energy_uj").write_text("%d\n" % (1000000 + 170000000))     # 170 J -> 85 W
    (p1 / "energy_uj").write_text("%d\n" % 40000000)                  # wrapped: 20 J + 40 J
    assert r.read() == [("package-0", 85), ("package-1", 30)]
    assert sources.energy_delta_uj(rng - 1, 1, rng) == 2
    assert sources.energy_delta_uj(5, 5, rng) == 0


def test_rapl_psys_alone_and_unreadable(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", 0, 1000)
    _zone(tmp_path, "intel-rapl:1", "psys", 0, 1000)
    assert [z[1] for z in sources.rapl_zones(str(tmp_path))] == ["psys"]
    assert sources.Rapl(str(tmp_path / "none")).why.startswith("no RAPL zones")
    if os.geteuid() != 0:          # root reads anything; the permission path needs a user
        e = tmp_path / "intel-rapl:0" / "energy_uj"
        e.chmod(0)
        r = sources.Rapl(str(tmp_path))
        r.zones = [z for z in r.zones if z[1] == "package-0"]
        assert r.read() == [] and "root only" in r.why


def test_sampler_uses_rapl_when_present(tmp_path):
    d = _zone(tmp_path, "intel-rapl:0", "package-0", 0, 10 ** 12)
    s = sources.Sampler(rapl_root=str(tmp_path), ipmi=False, nvml=False)
    time.sleep(0.2)
    # the energy file advances by more than any real 0.2 s window: power comes from RAPL
    (d / "energy_uj").write_text("%d\n" % 10 ** 9)
    r = s.sample()
    assert r["source"] == "rapl"
    assert [f for f in r["figures"] if f["source"] == "rapl"][0]["w"] == r["measured_w"] > 1000


LIVE_RAPL = "/sys/class/powercap/intel-rapl:0/energy_uj"


@pytest.mark.skipif(not os.path.exists(LIVE_RAPL), reason="no RAPL powercap on this machine "
                    "(VM or non-Intel/AMD host): %s absent" % LIVE_RAPL)
def test_rapl_live():
    if not os.access(LIVE_RAPL, os.R_OK):
        pytest.skip("%s is root-only on this kernel" % LIVE_RAPL)
    r = sources.Rapl()
    time.sleep(0.5)
    got = r.read()
    assert got and all(0 <= w < 2000 for _, w in got)


# ---- NVML / IPMI --------------------------------------------------------------------------------

def _nvml_why():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return "pynvml (nvidia-ml-py) not installed"
    n = sources.Nvml()
    return n.why


@pytest.mark.skipif(_nvml_why() is not None, reason="NVML: %s" % _nvml_why())
def test_nvml_live():
    got = sources.Nvml().read()
    assert got and all(w >= 0 and 0 <= u <= 1000 for _, w, u in got)


DCMI_OK = """
    Instantaneous power reading:                   236 Watts
    Minimum during sampling period:                 96 Watts
    Maximum during sampling period:                412 Watts
    Average power reading over sample period:      221 Watts
    IPMI timestamp:                           Tue Mar  5 10:12:44 2024
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated
"""


def test_dcmi_parser_recorded_output():
    assert sources.parse_dcmi(DCMI_OK) == 236
    assert sources.parse_dcmi(DCMI_OK.replace("activated", "deactivated")) is None
    assert sources.parse_dcmi("Instantaneous power reading: 0 Watts\n"
                              "Power reading state is: activated\n") == 0
    assert sources.parse_dcmi("Error: Unable to establish IPMI v2 / RMCP+ session") is None


@pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool not installed")
def test_ipmi_live():
    i = sources.Ipmi()
    w = i.read()
    if w is None:
        pytest.skip("ipmitool present but no DCMI reading: %s" % i.why)
    assert 0 <= w < 100000


# ---- queue -> forecast -----------------------------------------------------------------------------

def test_queue_json_forecast_matches_the_queue(tmp_path):
    now = 1700000000
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"jobs": [
        {"id": "train", "start": "+600", "duration_s": 7200, "power_w": 3000},
        {"id": 17, "start": now + 90, "duration_s": 60, "nodes": 4, "node_w": 250},
        {"id": "etl", "start": "queued", "duration_s": 300, "nodes": 2},
        {"id": "old", "start": "2023-11-14T22:00:00Z", "duration_s": 60, "power_w": 9},
    ]}))
    jobs = q.load(str(f), now, node_w=350)
    by = {j["id"]: j for j in jobs}
    assert by["train"]["start"] == now + 600 and by["train"]["state"] == "planned"
    assert by["17"]["power_w"] == 1000
    assert by["etl"] == {"id": "etl", "start": None, "duration_s": 300, "power_w": 700,
                         "state": "queued"}
    assert by["old"]["start"] == 1700000000 - 13 * 60 - 20
    w = q.load_w(jobs, now, 60, 150)
    assert len(w) == 150
    assert w[:5] == [700, 1200, 1200, 700, 700]     # etl now; job 17 straddles minutes 1-2
    assert w[5:10] == [0] * 5
    assert w[10:130] == [3000] * 120                 # the 2-hour job, minute by minute
    assert w[130:] == [0] * 20
    # energy is conserved: the forecast holds every job's Wh inside the horizon
    assert sum(w) * 60 == sum(j["power_w"] * j["duration_s"] for j in jobs if j["id"] != "old")
    # a queued job is never counted as already measured, a started one is
    assert q.running_w(jobs, now) == 0
    assert q.running_w(jobs, now + 700) == 3000


def test_queue_csv_and_errors(tmp_path):
    now = 1000
    f = tmp_path / "jobs.csv"
    f.write_text("id,start,duration_s,power_w,nodes,node_w\n"
                 "a,+60,120,500,,\n"
                 "b,queued,60,,3,100\n\n")
    jobs = q.load(str(f), now)
    assert [(j["id"], j["start"], j["power_w"]) for j in jobs] == [("a", 1060, 500), ("b", None, 300)]
    assert q.load_w(jobs, now, 60, 4) == [300, 500, 500, 0]
    bad = [
        ('[{"id": "x", "duration_s": 0, "power_w": 1}]', "duration_s: 0 below 1"),
        ('[{"id": "x", "duration_s": 10}]', "nodes (or power_w): missing"),
        ('[{"id": "x", "duration_s": 10, "nodes": 2}]', "node_w (or --node-w): missing"),
        ('[{"id": "x", "start": "tomorrow", "duration_s": 10, "power_w": 1}]', "start"),
        ('[{"duration_s": 10, "power_w": 1}]', "jobs[0].id: missing"),
        ('{"jobs": 3}', "list of jobs"),
        ('[{"id": "x", "duration_s": 1.5, "power_w": 1}]', "duration_s: 1.5 is not an integer"),
    ]
    for text, msg in bad:
        f = tmp_path / "bad.json"
        f.write_text(text)
        with pytest.raises(q.QueueError, match=msg.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            q.load(str(f), now)
    with pytest.raises(q.QueueError, match="header"):
        q.parse_csv("a,b\n1,2\n", now)
    p = _edgegw("tracker", "forecast", "--queue", str(tmp_path / "bad.json"))
    assert p.returncode == 2 and "Error: bad.json" in p.stderr and "Traceback" not in p.stderr


# recorded `squeue -h -o "%i|%S|%L|%D|%T"` text (Slurm prints local time)
SQUEUE_OUT = """\
4101|2024-03-05T09:00:00|1:30:00|2|RUNNING
4102|2024-03-05T11:00:00|2:00:00|4|PENDING
4103|N/A|1-00:00:00|1|PENDING
4104_[1-3]|N/A|45:00|1|PENDING
4105|2024-03-05T09:30:00|UNLIMITED|1|RUNNING
4099|2024-03-05T08:00:00|0:00|2|COMPLETING
"""


def test_squeue_parser_recorded_text():
    now = int(time.mktime((2024, 3, 5, 10, 0, 0, 0, 0, -1)))
    jobs = q.parse_squeue(SQUEUE_OUT, now, node_w=400, default_duration_s=1800)
    by = {j["id"]: j for j in jobs}
    assert "4099" not in by                                       # finishing: not load to come
    assert by["4101"]["state"] == "running"
    assert by["4101"]["start"] == now - 3600 and by["4101"]["duration_s"] == 3600 + 5400
    assert by["4101"]["power_w"] == 800
    assert by["4102"] == {"id": "4102", "start": now + 3600, "duration_s": 7200,
                          "power_w": 1600, "state": "planned"}
    assert by["4103"]["start"] is None and by["4103"]["duration_s"] == 86400
    assert by["4104_[1-3]"]["duration_s"] == 2700
    assert by["4105"]["duration_s"] == 1800 + 1800                # UNLIMITED -> default left
    assert q.running_w(jobs, now) == 800 + 400
    assert q.slurm_duration_s("2-03:04:05") == ((2 * 24 + 3) * 60 + 4) * 60 + 5
    assert q.slurm_duration_s("5") == 300 and q.slurm_duration_s("NOT_SET") is None
    with pytest.raises(q.QueueError, match="need 5 fields"):
        q.parse_squeue("1|2|3\n", now, 1)


@pytest.mark.skipif(not q.squeue_available(), reason="squeue (Slurm client) not installed")
def test_squeue_live():
    try:
        jobs = q.squeue(node_w=300)
    except q.QueueError as e:
        pytest.skip("squeue present but not usable here: %s" % e)
    assert all(j["power_w"] >= 0 and j["duration_s"] > 0 for j in jobs)


# ---- measured-load forecast ----------------------------------------------------------------------

def test_smoother_constant_step_and_ramp():
    s = fc.Smoother()
    for _ in range(20):
        s.update(1000, 10)
    assert s.level_w == 1000 and s.ramp is None
    assert s.forecast(5, 60) == [1000] * 5
    # a job starts: +2 kW at once is a step, the level follows at once
    assert s.update(3000, 10) == "step_up"
    assert s.level_w == 3000 and s.forecast(3, 60) == [3000] * 3
    # a steady ramp of +120 W/min, sampled every 10 s, is detected and extrapolated (damped)
    s = fc.Smoother(damp_s=600)
    w = 1000
    for _ in range(60):
        w += 20
        s.update(w, 10)
    assert s.ramp == "up" and 100 <= s.trend_w_min <= 140, s.trend_w_min
    f = s.forecast(30, 60)
    assert all(isinstance(v, int) for v in f)
    assert f[0] >= s.level_w and f[5] > f[0]
    assert f[10] == f[29]                               # beyond damp_s the trend stops
    assert f[29] - s.level_w <= 141 * 10
    # noise is not a ramp to extrapolate: one jumpy sample projects (almost) nothing
    s = fc.Smoother()
    for w in (150, 150, 150, 200):
        s.update(w, 1)
    assert max(s.forecast(30, 60)) - s.level_w <= 5, (s.ramp, s.trend_w_min, s.forecast(3, 60))
    # a falling load never forecasts below 0
    s = fc.Smoother(jump_w=10 ** 6, jump_pct=100)
    for w in range(3000, 0, -100):
        s.update(w, 10)
    assert min(s.forecast(60, 60)) == 0 and s.ramp == "down"
    with pytest.raises(ValueError, match="alpha_q6"):
        fc.Smoother(alpha_q6=0)


def test_combine_adds_only_the_change_the_queue_brings():
    assert fc.combine([500, 500, 500], [800, 0, 3000], 800) == [500, 0, 2700]
    with pytest.raises(ValueError, match="lengths"):
        fc.combine([1], [1, 2], 0)


def test_tracker_payload_and_signature():
    jobs = [{"id": "a", "start": 1020 + 120, "duration_s": 7200, "power_w": 3000, "state": "planned"}]
    tr = Tracker(lambda now: jobs, step_s=60, steps=10, valid_s=900, key=auth.parse_key(KEY_HEX),
                 device_id="gw1")
    m = tr.tick(1000, 400, "model")
    # t0 on the minute grid (960): the job starts at 1140 = step 3
    assert m["load_w"] == [400, 400, 400, 3400, 3400, 3400, 3400, 3400, 3400, 3400]
    assert (m["ts"], m["exp"], m["t0"], m["step_s"], m["measured_w"], m["source"]) == \
        (1000, 1900, 960, 60, 400, "model")
    assert topics.check_forecast(m) == []          # the link's validator accepts it
    v = auth.Verifier(auth.parse_key(KEY_HEX), "gw1")
    assert v.check(pub.KIND, m, 1001) == auth.OK
    assert auth.Verifier(auth.parse_key(KEY_HEX), "gw2").check(pub.KIND, m, 1001) == auth.BAD_SIG
    m2 = tr.tick(1000, 400, "model")
    assert m2["seq"] > m["seq"]
    with pytest.raises(ValueError, match="load_w"):
        pub.build(1, 1, 2, 1, 60, [1, -1], 0, "x")


def test_tracker_sends_changes_at_once_and_refreshes_the_rest():
    jobs = []
    tr = Tracker(lambda now: jobs, step_s=60, steps=30, valid_s=3600, refresh_s=300)
    assert tr.tick(6000, 500, "model") is not None        # the first one always goes
    assert tr.tick(6010, 520, "model") is None            # 20 W of noise: nothing to say
    assert tr.tick(6070, 480, "model") is None            # a minute on: same forecast, shifted
    jobs.append({"id": "j", "start": 6600, "duration_s": 600, "power_w": 2000, "state": "planned"})
    m = tr.tick(6080, 500, "model")                       # a job appears: sent at once
    assert m is not None and m["load_w"][(6600 - m["t0"]) // 60] >= 2400
    assert tr.tick(6090, 500, "model") is None
    assert tr.tick(6380, 500, "model") is not None        # refresh_s after the last one
    assert tr.tick(6390, 500, "model", force=True) is not None
    with pytest.raises(ValueError, match="refresh_s"):
        Tracker(refresh_s=3600, valid_s=3600)


# ---- MQTT: publish to a real broker, receive with paho -------------------------------------------

def test_publish_to_mosquitto(broker):
    sub = Sub(broker, "edgegw/gw7/compute/forecast")
    try:
        tr = Tracker(step_s=60, steps=30, key=KEY_HEX, device_id="gw7")
        msg = tr.tick(int(time.time()), 750, "rapl")
        p = pub.Publisher(broker)
        try:
            p.send("gw7", msg)
        finally:
            p.close()
        got = sub.wait(1)
    finally:
        sub.close()
    assert len(got) == 1
    topic, m, _ = got[0]
    assert topic == "edgegw/gw7/compute/forecast" and m == msg
    assert m["load_w"] == [750] * 30 and m["source"] == "rapl"
    assert auth.Verifier(auth.parse_key(KEY_HEX), "gw7").check(pub.KIND, m, m["ts"]) == auth.OK


def test_cli_run_once_publishes_the_queue_forecast(broker, tmp_path):
    qf = tmp_path / "q.json"
    qf.write_text(json.dumps([{"id": "big", "start": "+3600", "duration_s": 7200,
                               "power_w": 5000}]))
    kf = tmp_path / "key"
    kf.write_text(KEY_HEX + "\n")
    sub = Sub(broker, "edgegw/+/compute/forecast")
    try:
        p = _edgegw("tracker", "run", "--broker", broker, "--device", "node-a", "--queue", str(qf),
                    "--interval", "1", "--once", "--json", "--horizon", "200", "--key-file", str(kf))
        assert p.returncode == 0, p.stderr
        got = sub.wait(1)
    finally:
        sub.close()
    printed = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(got) == 1 and got[0][0] == "edgegw/node-a/compute/forecast" and got[0][1] == printed
    m = printed
    base = m["measured_w"]
    assert len(m["load_w"]) == 200 and m["step_s"] == 60
    # '+3600' counts from when the file was read (shortly before ts); t0 is on the minute grid,
    # so the job's first and last minutes hold its share of the minute
    lw = m["load_w"]
    k0 = (m["ts"] - 2 + 3600 - m["t0"]) // 60     # the job starts in minute k0 or k0 + 1
    assert lw[:k0] == [base] * k0 and lw[k0 + 2:k0 + 120] == [base + 5000] * 118
    assert lw[k0 + 122:] == [base] * (200 - k0 - 122)
    assert sum(lw) == 200 * base + 5000 * 120
    assert auth.Verifier(auth.parse_key(KEY_HEX), "node-a").check(pub.KIND, m, m["ts"]) == auth.OK
    # user mistakes: clear message, exit 2, no traceback
    p = _edgegw("tracker", "run", "--broker", "127.0.0.1:1", "--device", "x", "--once",
                "--unsigned")
    assert p.returncode == 2 and "--broker" in p.stderr and "Traceback" not in p.stderr
    p = _edgegw("tracker", "run", "--broker", broker, "--device", "x", "--queue",
                str(tmp_path / "missing.json"), "--unsigned")
    assert p.returncode == 2 and "no such file" in p.stderr
    # no key: refused before anything is published (the gateway would reject it)
    p = _edgegw("tracker", "run", "--broker", broker, "--device", "x", "--once")
    assert p.returncode == 2 and p.stderr.startswith("Error: --key-file")
    assert "--unsigned" in p.stderr and "Traceback" not in p.stderr


class Feeder:
    """Publishes a gateway telemetry record every 0.1 s (telemetry is not retained)."""

    def __init__(self, broker, device_id, rec):
        host, port = broker.split(":")
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.connect(host, int(port))
        self.c.loop_start()
        self.rec = rec
        self.topic = "edgegw/%s/telemetry" % device_id
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run)
        self.th.start()

    def _run(self):
        while not self.stop.is_set():
            self.c.publish(self.topic, json.dumps(self.rec), qos=0)
            self.stop.wait(0.1)

    def close(self):
        self.stop.set()
        self.th.join()
        self.c.loop_stop()
        self.c.disconnect()


def test_cli_run_on_the_gateway_clock_and_meter(broker, tmp_path):
    # the gateway's site clock is far from this host's (a virtual gateway, or no NTP):
    # t0 follows the telemetry ts, the measured load is its IT meter
    site_ts = 1500000000
    qf = tmp_path / "q.csv"
    qf.write_text("id,start,duration_s,power_w\njob,%d,600,2000\n" % (site_ts + 120))
    fd = Feeder(broker, "gwc", {"seq": 1, "ts": site_ts, "state": "ONLINE", "it_w": 1234})
    try:
        p = _edgegw("tracker", "run", "--broker", broker, "--device", "gwc", "--queue", str(qf),
                    "--clock", "gateway", "--measure", "gateway", "--once", "--json",
                    "--horizon", "20", "--unsigned")
    finally:
        fd.close()
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout.strip().splitlines()[-1])
    assert site_ts <= m["t0"] <= site_ts + 30 and m["exp"] == m["ts"] + 3600
    assert m["measured_w"] == 1234 and m["source"] == "gateway"
    k = (site_ts + 120 - m["t0"]) // 60        # the minute the job starts in
    assert m["load_w"][:k] == [1234] * k and m["load_w"][k + 1:k + 10] == [3234] * 9


def test_cli_run_gateway_clock_keeps_a_relative_job(broker, tmp_path):
    # '+600' counts from the gateway's now, not this host's (the tracker read the file once on
    # the host clock at start, so on a gateway clock hours ahead the job was in the past)
    site_ts = int(time.time()) + 5 * 3600
    qf = tmp_path / "q.json"
    qf.write_text(json.dumps([{"id": "soon", "start": "+600", "duration_s": 600,
                               "power_w": 2000}]))
    fd = Feeder(broker, "gwr", {"seq": 1, "ts": site_ts, "state": "ONLINE", "it_w": 1000})
    try:
        p = _edgegw("tracker", "run", "--broker", broker, "--device", "gwr", "--queue", str(qf),
                    "--clock", "gateway", "--measure", "gateway", "--once", "--json",
                    "--horizon", "30", "--unsigned")
    finally:
        fd.close()
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout.strip().splitlines()[-1])
    assert max(m["load_w"]) == 3000 and m["load_w"][:9] == [1000] * 9


def test_cli_headroom_published_and_local(broker, tmp_path):
    host, port = broker.split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(host, int(port))
    c.loop_start()
    now = int(time.time())
    hr = {"seq": 5, "ts": now, "headroom_w": 1800, "headroom_1h_w": 1200}
    c.publish("edgegw/gw3/headroom", json.dumps(hr), qos=1, retain=True).wait_for_publish(5)
    p = _edgegw("tracker", "headroom", "--broker", broker, "--device", "gw3", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["published"] == hr
    p = _edgegw("tracker", "headroom", "--broker", broker, "--device", "gw3")
    assert "now 1800 W, next hour 1200 W" in p.stdout
    # local computation from a telemetry record: 10 kWh battery at 80 %, floor 20 %
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"site": {"battery_wh": 10000, "soc_min_cpct": 2000,
                                         "reserve_s": 0, "discharge_max_w": 5000,
                                         "pcs_w": 5000, "eta_d_milli": 1000}}))
    tel = {"seq": 9, "ts": now, "pv_w": 2000, "it_w": 1500, "aux_w": 300, "soc_cpct": 8000,
           "grid_w": 0, "bat_w": -200}
    stop = threading.Event()

    def feed():       # telemetry is not retained: keep sending until the reader has it
        while not stop.is_set():
            c.publish("edgegw/gw3/telemetry", json.dumps(tel), qos=0)
            stop.wait(0.1)
    th = threading.Thread(target=feed)
    th.start()
    try:
        p = _edgegw("tracker", "headroom", "--broker", broker, "--device", "gw3", "--local",
                    str(site), "--json")
    finally:
        stop.set()
        th.join()
        c.loop_stop()
        c.disconnect()
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    # now: PV 2000 + battery 5000 - load 1800; hour: 6000 Wh usable caps the battery at 5000 W
    assert out["local"] == {"headroom_w": 5200, "headroom_1h_w": 5200}
    assert out["telemetry_seq"] == 9


# ---- the tracker's forecast into the real dispatch -------------------------------------------------

SITE = {"battery_wh": 10000, "soc_init_cpct": 3000, "soc_min_cpct": 1000, "soc_max_cpct": 9500,
        "pcs_w": 5000, "grid_cap_w": 2500, "reserve_s": 900}


def _night_with_a_job(use_tracker):
    """Minute steps through a night (no PV): 500 W base, a 3 kW job queued to start in 1 h for
    2 h, grid import capped at 2.5 kW. The dispatch gets the tracker's messages (or none)."""
    from edgefw import dispatch
    d = dispatch.Dispatcher(SITE)
    t0 = 1700000000
    job = {"id": "train", "start": t0 + 3600, "duration_s": 7200, "power_w": 3000,
           "state": "planned"}
    tr = Tracker(lambda now: [job], step_s=60, steps=240)
    e = SITE["soc_init_cpct"] * SITE["battery_wh"]        # Wh x 10000
    soc, sp, rows = SITE["soc_init_cpct"], 0, []
    for m in range(200):
        now = t0 + m * 60
        it = 500 + (3000 if t0 + 3600 <= now < t0 + 3600 + 7200 else 0)
        if use_tracker:
            msg = tr.tick(now, it, "model")
            d.set_forecast(msg["t0"], msg["step_s"], msg["load_w"], msg["exp"])
        sp = d.step(now, 0, it, 0, it - sp, soc, 5000, 5000)
        if sp < 0:
            e += -sp * 60 * 950 // 1000 * 10000 // 3600
        else:
            e -= sp * 60 * 1000 // 950 * 10000 // 3600
        soc = e // 10000
        rows.append((m, it, sp, it - sp, soc, d.reason))
    return rows


def test_tracker_forecast_makes_dispatch_precharge_before_the_job():
    without = _night_with_a_job(False)
    withfc = _night_with_a_job(True)
    # without a forecast the battery drifts down before the job and the cap breaks during it
    assert without[59][4] < SITE["soc_init_cpct"]
    assert max(r[3] for r in without) > SITE["grid_cap_w"]
    # with the tracker's forecast SOC rises before the job starts (minute 60) ...
    assert withfc[59][4] >= SITE["soc_init_cpct"] + 500, withfc[59]
    assert any(r[5] == "precharge" for r in withfc[:60])
    # ... and the grid stays within its cap for the whole job
    assert max(r[3] for r in withfc) <= SITE["grid_cap_w"]


E2E_SPEED = 60          # site seconds per real second


def test_e2e_queued_job_raises_soc_before_it_starts(tmp_path):
    """The unmodified firmware under micropython (virtual gateway), a real mosquitto and the
    real `edgegw tracker run` process: a 2-hour 3 kW job queued to start in 15 site-minutes
    makes the gateway charge (within its grid cap) before the job starts."""
    vgw = pytest.importorskip("edgegw.vgw", reason="virtual gateway (host/edgegw/vgw.py) "
                              "not in the tree yet")
    from edgegw.mosq import Mosquitto
    from edgegw.simsite import SimSite
    t0 = 1780000000 - 1780000000 % 86400 + 22 * 3600       # 22:00 UTC (2026): night, no PV
    t_job = t0 + 15 * 60

    def it(t):
        return 500.0 + (3000.0 if t_job <= t < t_job + 7200 else 0.0)
    sim = SimSite(t0=t0, pv=0, it=it, aux=200, soc_cpct=3000, battery_wh=10240)
    qf = tmp_path / "queue.json"
    qf.write_text(json.dumps([{"id": "train", "start": t_job, "duration_s": 7200,
                               "power_w": 3000}]))
    kf = tmp_path / "key"
    kf.write_text(KEY_HEX)
    with Mosquitto() as m:
        broker = "127.0.0.1:%d" % m.port
        cfg = vgw.site_config(site={"battery_wh": 10240, "soc_min_cpct": 1000,
                                    "soc_max_cpct": 9500, "pcs_w": 5000, "grid_cap_w": 2500,
                                    "reserve_s": 900},
                              link={"host": "127.0.0.1", "port": m.port, "key": KEY_HEX})
        cfg["device_id"] = "gw-e2e"
        cfg["status_s"] = 1            # telemetry every second: the tracker's clock and meter
        acks = Sub(broker, "edgegw/gw-e2e/ack")
        with vgw.VirtualGateway(str(tmp_path / "gw"), cfg, sim, speed=E2E_SPEED) as gw:
            tr = subprocess.Popen(EDGEGW + [
                "tracker", "run", "--broker", broker, "--device", "gw-e2e", "--queue", str(qf),
                "--clock", "gateway", "--speed", str(E2E_SPEED), "--measure", "gateway",
                "--interval", "1", "--key-file", str(kf)], cwd=REPO, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
            rows = []
            try:
                t_end = time.monotonic() + 40
                while time.monotonic() < t_end:
                    s = gw.status(points=False)
                    # r[6], r[7]: the simulated site's own time and grid import (the
                    # plant, not the gateway's view of it)
                    rows.append((s["t"], s["site"].get("soc_cpct"), s["sp_w"], s["sp_src"],
                                 s["site"].get("grid_w"), s["cap_w"], sim.t, sim.grid_w))
                    if s["t"] >= t_job + 60:
                        break
                    time.sleep(0.5)
                # the gateway's retained headroom, and the same figures computed here from its
                # telemetry with its site parameters
                site = tmp_path / "site.json"
                site.write_text(json.dumps(cfg))
                hp = _edgegw("tracker", "headroom", "--broker", broker, "--device", "gw-e2e",
                             "--local", str(site), "--json")
            finally:
                tr.terminate()
                out = tr.communicate(10)[0]
        acks.close()
    before = [r for r in rows if r[0] < t_job and r[1] is not None]
    soc0 = before[0][1]
    assert abs(soc0 - 3000) <= 20, rows[:3]
    # the gateway accepted the tracker's signed forecasts
    fa = [a for _, a, _ in acks.msgs if a.get("kind") == "forecast"]
    assert fa and all(a["ok"] for a in fa), (acks.msgs, out[-2000:])
    # it charged ahead of the job (without a forecast it holds or drifts down: the 700 W base
    # fits under the cap), as much as the plan needs: SOC up by 1 % or more before the start
    assert sum(1 for r in before if r[2] < -500) >= 3, before
    assert max(r[1] for r in before) >= soc0 + 100, (before, out[-2000:])
    # charging stayed within the import cap the gateway holds: the plant's grid import, read
    # from the simulated site (the gateway's own grid_w is not the judge: it is the meter, or
    # the balance when the meter reading is not fresh, and for a poll after a setpoint step
    # that balance used an unmetered-load estimate 200 W off: 2739 W shown, 2539 W real).
    # The job is marginal at 2500 W (battery above the floor plus 15 min of precharge:
    # ~2.37 kWh for the 2.4 kWh it needs above the cap), so the dispatcher may raise the cap
    # for the night to the lowest level it can hold (seen 2539-2563 W on a quiet host; with
    # the tracker's forecasts arriving at other site times on a busy one, up to 2658 W: the
    # plan's first 15-min block then holds the job's start and the precharge stops up to
    # 6 min early, issue 15): allowed, but only that little
    cap = max(r[5] for r in before)
    assert 2500 <= cap <= 2500 * 108 // 100, before
    assert max(r[7] for r in rows if r[6] < t_job) <= cap + 50, before
    # and the job, once running, is carried by the battery: discharge after the start
    assert any(r[2] > 500 for r in rows if r[0] >= t_job + 30), rows[-5:]
    assert hp.returncode == 0, hp.stderr
    h = json.loads(hp.stdout)
    assert isinstance(h["published"]["headroom_w"], int) and h["published"]["ts"] >= t_job
    assert h["published"]["headroom_1h_w"] <= h["published"]["headroom_w"]
    # telemetry carries no dcl_w (the BMS discharge limit, here a little under the 5 kW PCS
    # rating) that the gateway also bounds with: equal up to that
    loc, tel = h["local"], h["in_telemetry"]
    assert loc["headroom_1h_w"] == tel["headroom_1h_w"], h
    assert 0 <= loc["headroom_w"] - tel["headroom_w"] <= 100, h


# ---- the site forecast (PV / aux) sent beside the compute forecast ---------------------------

def test_site_forecast_file_on_the_forecast_steps(tmp_path):
    from edgegw.tracker import siteforecast as sf
    f = sf.parse("t,pv_w,aux_w\n900,1000,300\n1800,2500.4,\n2700,4000,350\n")
    # steps of 5 min from t0 = 1200: the file holds 1000 until 1800, 2500 until 2700, then
    # 4000 for as long as the step before it (until 3600); aux stops at its empty cell
    got = sf.steps(f, 1200, 300, 12)
    assert got["pv_w"] == [1000, 1000, 2500, 2500, 2500, 4000, 4000, 4000]
    assert got["aux_w"] == [300, 300]
    assert sf.steps(f, 0, 300, 4) == {}                 # before the file: nothing claimed
    tr = Tracker(step_s=300, steps=12, site_fn=lambda t0, s, n: sf.steps(f, t0, s, n))
    m = tr.tick(1250, 500, "model")
    assert m["pv_w"] == got["pv_w"] and m["aux_w"] == [300, 300]
    assert topics.check_forecast(m) == []               # the gateway's check takes it
    for text, what in (("x,pv_w\n1,2\n", "header"), ("t,pv_w\n", "no rows"),
                       ("t,pv_w\n5,1\n5,2\n", "not after"), ("t,pv_w\n1,-3\n", "0.."),
                       ("t,aux_w\n1,lots\n", "not a number"), ("", "empty")):
        with pytest.raises(sf.SiteForecastError, match=what):
            sf.parse(text)
    # a file that turns bad keeps the last good figures and says why
    p = tmp_path / "pv.csv"
    p.write_text("t,pv_w\n0,800\n3600,900\n")
    ff = sf.SiteForecastFile(str(p))
    assert ff(0, 600, 3)["pv_w"] == [800, 800, 800]
    p.write_text("t,pv_w\n0,oops\n")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    assert ff(0, 600, 3)["pv_w"] == [800, 800, 800] and "not a number" in ff.error


def test_cli_run_once_sends_the_site_forecast(broker, tmp_path):
    now = int(time.time())
    pv = tmp_path / "pv.csv"
    pv.write_text("t,pv_w\n%d,1200\n%d,3400\n%d,0\n" % (now - 600, now + 1800, now + 7200))
    kf = tmp_path / "key"
    kf.write_text(KEY_HEX + "\n")
    p = _edgegw("tracker", "run", "--broker", broker, "--device", "node-s", "--site-forecast",
                str(pv), "--interval", "1", "--once", "--json", "--horizon", "240",
                "--key-file", str(kf))
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout.strip().splitlines()[-1])
    k = (now + 1800 - m["t0"] + 59) // 60        # the first step at or after the change
    assert m["pv_w"][0] == 1200 and m["pv_w"][k] == 3400 and m["pv_w"][-1] == 0
    # the last row holds as long as the one before it (5400 s): the list stops there
    assert len(m["pv_w"]) == (now + 7200 + 5400 - m["t0"] + 59) // 60 < 240
    assert auth.Verifier(auth.parse_key(KEY_HEX), "node-s").check(pub.KIND, m, m["ts"]) == auth.OK
    bad = tmp_path / "bad.csv"
    bad.write_text("when,pv\n1,2\n")
    p = _edgegw("tracker", "run", "--broker", broker, "--device", "x", "--site-forecast",
                str(bad), "--once", "--unsigned")
    assert p.returncode == 2 and "--site-forecast" in p.stderr and "header" in p.stderr
    assert "Traceback" not in p.stderr
