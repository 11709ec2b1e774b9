"""pytest plugin of the HIL suite: options, fixtures, the summary table.

Options (pytest ... hil_tests):
  --target sil|board   sil (default): the virtual gateway; board: a real gateway
  --port PORT          the board's REPL serial port (--target board)
  --bus NAME=URL       a bus adapter the simulated devices answer on (board; repeatable)
  --broker HOST:PORT   use this MQTT broker (else mosquitto on a free loopback port)
  --speed N            site clock speed-up for every test (default: each test's own)
  --heap SIZE          sil: micropython heap (default 512k, as vgw)

Fixtures: hil (the options), broker, cloud, site, launch (factory of DUTs), gateway (a
DUT on the typical site), replayer (factory: a trace played as the slaves of one bus),
report (a row of the summary: scenario, fault, key figure, metrics).
Markers: slow, soak (pyproject), sil_only (skipped on a board: needs the virtual
gateway's filesystem or process). Results: hil_tests/results/summary.md + summary.json.
"""
import json
import os
import sys
import time

import pytest

from hilkit import dut as D

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(HERE, "results")
DEVICE_ID = "hil-gw"

_rows = []   # summary rows of this session


# ---- options ------------------------------------------------------------------------------

def pytest_addoption(parser):
    g = parser.getgroup("hil", "edgegw hardware-in-loop suite")
    g.addoption("--target", choices=("sil", "board"), default="sil",
                help="sil: the virtual gateway (default); board: a real gateway")
    g.addoption("--port", default=None, help="the board's REPL serial port (--target board)")
    g.addoption("--bus", action="append", default=[], metavar="NAME=URL",
                help="bus NAME served by the simulated devices on URL (a USB-RS485 adapter, "
                     "any pyserial URL); repeatable; --target board")
    g.addoption("--broker", default=None, metavar="HOST:PORT",
                help="MQTT broker to use (default: mosquitto on a free loopback port)")
    g.addoption("--speed", type=int, default=None,
                help="site clock speed-up for every test (default: each test's own)")
    g.addoption("--heap", default=None, metavar="SIZE",
                help="sil: micropython heap of the virtual gateway (default: vgw's 512k)")


class Options:
    def __init__(self, config):
        o = config.option
        self.target = o.target
        self.port = o.port
        self.buses = {}
        for spec in o.bus:
            name, url = D.parse_bus(spec)
            if name in self.buses:
                raise D.DutError("--bus %s: bus %r given twice" % (spec, name))
            self.buses[name] = url
        self.broker = D.parse_broker(o.broker) if o.broker else None
        self.speed = o.speed
        self.heap = o.heap
        if self.heap and not (self.heap[:-1].isdigit() and self.heap[-1] in "kKmM"
                              or self.heap.isdigit()):
            raise D.DutError("--heap %r: a size like 384k or 1m" % self.heap)
        if self.speed is not None and not 1 <= self.speed <= 3600:
            raise D.DutError("--speed %d: out of range 1..3600" % self.speed)
        if self.target == "board":
            if not self.port:
                raise D.DutError("--port: the gateway's REPL serial port is needed with "
                                 "--target board")
            if not self.buses:
                raise D.DutError("--bus: give at least one NAME=URL with --target board")
            if self.speed not in (None, 1):
                raise D.DutError("--speed %d: a real board's clock runs real time; use 1"
                                 % self.speed)
        elif self.port or self.buses:
            raise D.DutError("--port/--bus: only with --target board")

    def speed_for(self, default):
        if self.target == "board":
            return 1
        return self.speed or default


def pytest_configure(config):
    config.addinivalue_line("markers", "sil_only: needs the virtual gateway (skipped on a board)")
    try:
        config._hil = Options(config)
    except D.DutError as e:
        raise pytest.UsageError(str(e))


def pytest_collection_modifyitems(config, items):
    o = getattr(config, "_hil", None)
    if o is None or o.target != "board":
        return
    skip = pytest.mark.skip(reason="sil_only: needs the virtual gateway's process/filesystem")
    for it in items:
        if "sil_only" in it.keywords:
            it.add_marker(skip)


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def hil(request):
    return request.config._hil


class ExternalBroker:
    external = True
    running = True

    def __init__(self, host, port):
        self.host, self.port = host, port

    def stop(self):
        pytest.skip("broker loss needs the suite's own mosquitto (no --broker)")

    start = stop


@pytest.fixture
def broker(hil):
    if hil.broker:
        yield ExternalBroker(*hil.broker)
        return
    if hil.target == "board":
        pytest.skip("a board needs --broker HOST:PORT it can reach (not the PC's loopback)")
    from edgegw.mosq import Mosquitto
    m = Mosquitto()
    # persistent sessions survive a broker kill (saved every second): the cloud stand-in's
    # subscription is still there when the broker returns, however fast the gateway is
    # (a mosquitto started as root drops to the `mosquitto` user: the store must be open
    # to it)
    db = os.path.join(m.dir, "db")
    os.mkdir(db)
    os.chmod(db, 0o777)
    os.chmod(m.dir, 0o711)
    with open(m.conf, "a") as f:
        f.write("persistence true\npersistence_location %s/\nautosave_interval 1\n" % db)
    with m:
        m.external = False
        yield m


@pytest.fixture
def cloud(broker):
    from hilkit.cloud import Cloud
    c = Cloud(broker.host, broker.port, DEVICE_ID)
    c.wait_ready()
    yield c
    c.close()


@pytest.fixture
def site():
    from hilkit.scenario import RecSite
    return RecSite(pv=3000, it=2200, aux=400, soc_cpct=6000)


def new_dut(hil, config, site, speed, dirpath, **kw):
    """A DUT of the selected target (not started)."""
    sp = hil.speed_for(speed)
    if hil.target == "board":
        return D.BoardGateway(hil.port, hil.buses, config, site, speed=sp)
    if hil.heap:
        kw["heapsize"] = hil.heap
    return D.SilGateway(dirpath, config, site, speed=sp, **kw)


@pytest.fixture
def launch(hil, tmp_path):
    """launch(config, site, speed=..., **VirtualGateway kwargs) -> a started DUT."""
    made = []

    def start(config, site, speed=30, dirpath=None, **kw):
        g = new_dut(hil, config, site, speed, dirpath or str(tmp_path / ("gw%d" % len(made))),
                    **kw)
        made.append(g)
        g.start()
        return g
    start.made = made
    yield start
    for g in made:
        try:
            g.close()
        except Exception as e:     # teardown goes on with the others; say what failed
            print("hil: closing %s failed: %s: %s" % (type(g).__name__, type(e).__name__, e),
                  file=sys.stderr)


@pytest.fixture
def gateway(launch, site):
    from edgegw.vgw import site_config
    g = launch(site_config(control={"mode": "hold", "hold_w": 0}, safety={"clean_s": 2}), site)
    g.wait(lambda s: s["site"]["soc_cpct"] is not None, 30, points=False)
    return g


@pytest.fixture
def replayer(hil):
    """replayer(records, baud, faults=None, bus=None, port=None) -> Replayer serving the
    slaves of a trace. sil: port = gw.external_ports[bus] (launch(..., external=(bus,)));
    board: the --bus adapter of that bus."""
    from edgegw.replayer import Replayer
    made = []

    def start(records, baud, faults=None, bus=None, port=None):
        if hil.target == "board":
            if bus not in hil.buses:
                pytest.skip("replay on a board needs --bus %s=URL" % bus)
            port = hil.buses[bus]
        r = Replayer(records, baud, faults)
        r.start(port)
        made.append(r)
        return r
    yield start
    for r in made:
        r.stop()


class Row:
    """One line of the summary: report(scenario=..., fault=...); report.figure(text);
    report.metric(name=value, ...)."""

    def __init__(self, item):
        self.item = item
        self.d = {"test": item.nodeid, "scenario": "", "fault": "", "figure": "",
                  "metrics": {}}
        item._hil_row = self

    def __call__(self, scenario="", fault="", figure=None):
        self.d["scenario"] = scenario
        self.d["fault"] = fault
        if figure is not None:
            self.figure(figure)
        return self

    def figure(self, text):
        self.d["figure"] = text
        self.item.user_properties.append(("figure", text))

    def metric(self, **kw):
        for k, v in kw.items():
            self.d["metrics"][k] = v
            self.item.user_properties.append((k, json.dumps(v)))


@pytest.fixture
def report(request):
    return Row(request.node)


# ---- summary ------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    out = yield
    rep = out.get_result()
    row = getattr(item, "_hil_row", None)
    if row is None:
        return
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        if hasattr(rep, "wasxfail"):
            res = "xfail" if rep.skipped else "XPASS"
        else:
            res = "pass" if rep.passed else ("skip" if rep.skipped else "FAIL")
        d = dict(row.d, result=res, seconds=round(getattr(rep, "duration", 0.0), 1))
        if res == "FAIL":
            msg = str(rep.longrepr.reprcrash.message) if hasattr(rep.longrepr, "reprcrash") \
                else str(rep.longrepr)
            d["error"] = msg.splitlines()[0][:200] if msg else ""
        elif res in ("skip", "xfail"):
            lr = rep.longrepr
            d["error"] = (lr[2] if isinstance(lr, tuple) else str(getattr(rep, "wasxfail", "")))[:200]
        _rows.append(d)


def table(rows):
    head = ("scenario", "fault", "result", "key figure")
    lines = [[r["scenario"], r["fault"] or "-", r["result"],
              r["figure"] or r.get("error", "")] for r in rows]
    w = [max([len(head[i])] + [len(x[i]) for x in lines]) for i in range(3)]
    fmt = "%%-%ds  %%-%ds  %%-%ds  %%s" % tuple(w)
    return [fmt % head] + [fmt % tuple(x) for x in lines]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _rows:
        return
    tr = terminalreporter
    tr.section("HIL summary (%s)" % config._hil.target)
    for ln in table(_rows):
        tr.write_line(ln)
    paths = write_results(config._hil.target)
    tr.write_line("written: %s" % ", ".join(os.path.relpath(p) for p in paths))


def write_results(target):
    os.makedirs(RESULTS, exist_ok=True)
    md = os.path.join(RESULTS, "summary.md")
    js = os.path.join(RESULTS, "summary.json")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(md, "w") as f:
        f.write("# HIL summary (target %s, %s)\n\n" % (target, stamp))
        f.write("| scenario | fault | result | key figure | test |\n|---|---|---|---|---|\n")
        for r in _rows:
            f.write("| %s | %s | %s | %s | `%s` |\n" % (
                r["scenario"], r["fault"] or "-", r["result"],
                (r["figure"] or r.get("error", "")).replace("|", "/"), r["test"]))
        n = len(_rows)
        bad = sum(1 for r in _rows if r["result"] in ("FAIL", "XPASS"))
        f.write("\n%d rows, %d failed\n" % (n, bad))
    with open(js, "w") as f:
        json.dump({"target": target, "time": stamp, "rows": _rows}, f, indent=1)
    return [md, js]
