"""Trace regression and a replayed trace with faults: the captured traffic of both buses of
the typical site (hil_tests/golden/site_bus*.jsonl, make_golden.py) is played back as the
slaves; the gateway must decode exactly the telemetry recorded with it (site_golden.json),
and with faults injected into the replay it must count them and never decode anything else."""
import json
import os
import sys
import time

import pytest

from edgegw.replayer import Faults
from hilkit.scenario import RecSite
from protocols import trace

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
sys.path.insert(0, GOLDEN)
import make_golden  # noqa: E402

SPEED = 2   # the replayed answers keep their recorded latency: 4 meters fit a period
pytestmark = pytest.mark.sil_only   # the board path needs the replay on its --bus adapters


def _golden():
    with open(os.path.join(GOLDEN, "site_golden.json")) as f:
        return json.load(f)


def _records(bus):
    h, recs = trace.read(os.path.join(GOLDEN, "site_%s.jsonl" % bus))
    return h, list(recs)


def _start(launch, replayer, faults=None):
    gw = launch(make_golden.config(), RecSite(), speed=SPEED, external=("bus0", "bus1"))
    rps = {}
    for b in ("bus0", "bus1"):
        h, recs = _records(b)
        rps[b] = replayer(recs, h["baud"], (faults or {}).get(b), bus=b,
                          port=gw.external_ports[b])
    return gw, rps


def _diff(s, g, missing=True):
    """[(device.point, decoded, golden)] that differ (fresh points only; with missing,
    points not decoded yet count too)."""
    out = []
    for dev, pts in g["points"].items():
        got = s["site"]["points"].get(dev, {})
        for p, v in pts.items():
            if p not in got:
                if missing:
                    out.append(("%s.%s" % (dev, p), None, v))
            elif got[p][2] == "ok" and got[p][0] != v:
                out.append(("%s.%s" % (dev, p), got[p][0], v))
    return out


def _polled(s, n):
    return all(s["buses"][b][d]["ok"] >= n for b in s["buses"] for d in s["buses"][b]
               if not d.startswith("_"))


def test_trace_regression_golden(launch, replayer, report):
    report(scenario="trace regression (typical site, 2 buses)", fault="-")
    g = _golden()
    gw, rps = _start(launch, replayer)
    s = gw.wait(lambda s: _polled(s, 4), 40)
    diff = _diff(s, g)
    site = {k: s["site"][k] for k in g["site"]}
    npts = sum(len(p) for p in g["points"].values())
    report.figure("%d points + %d derived values, %d differ" % (npts, len(site), len(diff)))
    report.metric(points=npts, differ=len(diff),
                  exact={b: r.stats["exact"] for b, r in rps.items()})
    assert not diff, diff
    assert site == g["site"], (site, g["site"])


def test_trace_replayed_with_faults(launch, replayer, report):
    """10 % CRC-corrupted responses, 10 % noise bursts, 5 % dropped, the grid meter silent
    for 2 s: the gateway counts them, never decodes a value the trace does not hold, and
    ends with exactly the recorded telemetry."""
    report(scenario="trace replay (typical site)",
           fault="CRC 10 %, noise 10 %, drop 5 %, grid meter silent 2 s")
    g = _golden()
    f = {"bus0": Faults(corrupt_crc=0.10, noise_burst=0.10, drop=0.05, silent=["2@1-3"],
                        seed=11),
         "bus1": Faults(corrupt_crc=0.10, noise_burst=0.10, drop=0.05, seed=12)}
    gw, rps = _start(launch, replayer, f)
    wrong = []
    end = time.monotonic() + 5
    while time.monotonic() < end:
        wrong += _diff(gw.status(), g, missing=False)
        time.sleep(0.2)
    s = gw.wait(lambda s: _polled(s, 6) and not any(
        s["buses"][b][d]["stale"] for b in s["buses"] for d in s["buses"][b]
        if not d.startswith("_")), 60)
    wrong += _diff(s, g)
    st = {k: sum(r.stats[k] for r in rps.values()) for k in ("corrupted", "noise", "dropped",
                                                             "silenced", "answered")}
    crc = sum(s["buses"][b][d]["crc"] for b in s["buses"] for d in s["buses"][b]
              if not d.startswith("_"))
    tmo = sum(s["buses"][b][d]["timeouts"] for b in s["buses"] for d in s["buses"][b]
              if not d.startswith("_"))
    report.figure("injected %d CRC, %d noise, %d dropped, %d silenced -> counted %d CRC, "
                  "%d timeouts; %d wrong values" % (st["corrupted"], st["noise"], st["dropped"],
                                                    st["silenced"], crc, tmo, len(wrong)))
    report.metric(injected=st, counted_crc=crc, counted_timeouts=tmo, wrong=len(wrong))
    assert st["corrupted"] >= 3 and st["dropped"] >= 1 and st["silenced"] >= 1, st
    assert crc >= 1 and tmo >= st["dropped"] // 2
    assert not wrong, wrong[:10]
