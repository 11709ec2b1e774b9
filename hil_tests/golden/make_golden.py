"""Regenerate the trace-regression golden files (run from the repo root, then commit):

    .venv/bin/python hil_tests/golden/make_golden.py

Captures both RS-485 buses of a virtual gateway polling the simulated typical site (held
still, so every response of a request carries the same numbers) as JSON Lines traces
(protocols/trace.py), and the telemetry the gateway decoded while they were taken:
site_bus0.jsonl, site_bus1.jsonl, site_golden.json."""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(REPO, "host"), REPO,
                os.path.join(REPO, "firmware")]

from edgegw.simsite import SimSite  # noqa: E402
from edgegw.vgw import VirtualGateway, site_config  # noqa: E402
from protocols import trace  # noqa: E402

DERIVED = ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w")


def config():
    return site_config(control={"mode": "hold", "hold_w": 0}, safety={"clean_s": 2})


def main():
    site = SimSite(t0=1782043200, pv=4321, it=2345, aux=456, soc_cpct=6789)
    site.freeze()
    with VirtualGateway(tempfile.mkdtemp(prefix="hil-golden-"), config(), site, speed=10) as gw:
        gw.wait(lambda s: all(s["buses"][b][d]["polls"] >= 4 for b in s["buses"]
                              for d in s["buses"][b] if not d.startswith("_")), 40, points=False)
        s = gw.status()
        frames = {b: list(gw.buses[b].trace) for b in gw.buses}
    for b, fr in frames.items():
        t0 = fr[0][0]
        with open(os.path.join(HERE, "site_%s.jsonl" % b), "w") as f:
            w = trace.Writer(f, {"baud": gw.cfg["buses"][int(b[-1])]["baud"],
                                 "source": "edgegw virtual gateway, simulated typical site, %s"
                                 % b})
            for t, d, data in fr:
                w.frame(int((t - t0) * 1e6), b, d, data)
    golden = {"note": "decoded by the gateway while site_bus*.jsonl were captured "
                      "(make_golden.py)",
              "site": {k: s["site"][k] for k in DERIVED},
              "points": {dev: {p: v[0] for p, v in pts.items()}
                         for dev, pts in s["site"]["points"].items()}}
    with open(os.path.join(HERE, "site_golden.json"), "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
    print("frames:", {b: len(f) for b, f in frames.items()})


if __name__ == "__main__":
    main()
