"""Virtual-gateway benches (`make bench`):

memory: the firmware runs 24 simulated hours (clock x SPEED) on the smallest heap tried
that boots; gc.mem_alloc() after gc.collect() at site hour 1 and hour 24, the growth
between them, micropython.mem_peak(), and whether -X heapsize=64k boots at all.

poll_cycle: one 9600-baud bus with the PCS and three SDM630 meters, the simulated devices
pacing every answer at the wire time of request + response + t3.5; measured time of the
polls divided by the theoretical bus time of the same frames (11 bits a byte, t3.5
silence before every frame)."""
import os
import re
import tempfile
import time

from edgegw.simsite import SimSite
from edgegw.vgw import VirtualGateway, site_config
from protocols import modbus_rtu as rtu

SPEED = 960          # 24 h in 90 s
HEAPS = ("64k", "128k", "192k", "256k", "320k", "384k", "512k")

_MEM = ("import gc, micropython\ngc.collect()\n"
        "print('MEM', gc.mem_alloc(), gc.mem_free(), micropython.mem_peak())")


def _mem(gw):
    out = gw.exec(_MEM, timeout=30)
    m = re.search(r"MEM (\d+) (\d+) (\d+)", out)
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _boots(heap):
    d = tempfile.mkdtemp(prefix="edgegw-bench-")
    try:
        with VirtualGateway(d, site_config(), SimSite(), speed=10, heapsize=heap,
                            ready_timeout=10) as gw:
            time.sleep(1.0)
            s = gw.status(False)
            return s["running"] and not any("MemoryError" in e[1] for e in s["errors"])
    except Exception:
        return False


def memory(hours=24, heaps=HEAPS):
    res = {"speed": SPEED}
    heap = None
    for h in heaps:
        ok = _boots(h)
        res["boots_%s" % h] = ok
        if ok:
            heap = h
            break
    if heap is None:
        res["error"] = "no heap size in %s boots" % (heaps,)
        return res
    res["heapsize"] = heap
    sim = SimSite()
    t0 = sim.t
    d = tempfile.mkdtemp(prefix="edgegw-bench-")
    with VirtualGateway(d, site_config(), sim, speed=SPEED, heapsize=heap) as gw:
        while sim.t - t0 < 3600 * min(1, hours / 2.0):
            time.sleep(0.2)
        a1, f1, p1 = _mem(gw)
        while sim.t - t0 < hours * 3600:
            time.sleep(0.5)
            if not gw.alive():
                break
        s = gw.status(False)
        a24, f24, p24 = _mem(gw)
        res.update({"alloc_h1": a1, "alloc_h24": a24, "growth_bytes": a24 - a1,
                    "free_h24": f24, "mem_peak_h1": p1, "mem_peak_h24": p24,
                    "site_hours": round((sim.t - t0) / 3600.0, 2),
                    "loop_errors": s["nerr"], "errors": s["errors"],
                    "memoryerror": any("MemoryError" in e[1] for e in s["errors"]),
                    "alive": gw.alive(), "loops": s["loops"]})
    res["note"] = ("mem_peak counts every allocation since boot on this unix build (GC frees "
                   "are not subtracted), so alloc after gc.collect() is the resident figure")
    return res


def poll_cycle(seconds=10.0):
    cfg = site_config(period_ms=50, timeout_ms=200)
    cfg["buses"] = cfg["buses"][:1]
    cfg["devices"] = [d for d in cfg["devices"] if d["bus"] == "bus0"]
    cfg["control"] = {"mode": "off"}
    d = tempfile.mkdtemp(prefix="edgegw-bench-")
    with VirtualGateway(d, cfg, SimSite(), speed=1, pace=True) as gw:
        time.sleep(2.0)  # settle
        bus = gw.buses["bus0"]
        n0 = len(bus.trace)
        time.sleep(seconds)
        tr = list(bus.trace)[n0:]  # deque maxlen 4000: ~20 frames a second here
    baud = 9600
    c = 11.0 / baud
    t35 = rtu.silence_us(baud) / 1e6
    reqs = [i for i, x in enumerate(tr) if x[1] == "req"]
    if len(reqs) < 10:
        return {"error": "only %d requests seen" % len(reqs)}
    first, last = reqs[0], reqs[-1]
    theo = 0.0
    n = 0
    for i in range(first, last):
        if tr[i][1] == "req":
            n += 1
        theo += len(tr[i][2]) * c + t35
    measured = tr[last][0] - tr[first][0]
    return {"baud": baud, "transactions": n, "measured_s": round(measured, 3),
            "theoretical_s": round(theo, 3), "ratio": round(measured / theo, 4),
            "target": 1.10}


def run(small=False):
    """small: 2 s of polls, 0.2 site hours on a 512k heap (make test's smoke run)."""
    if small:
        return {"poll_cycle": poll_cycle(2.0), "memory": memory(0.2, ("512k",))}
    return {"poll_cycle": poll_cycle(), "memory": memory()}


if __name__ == "__main__":
    import json
    import sys
    which = sys.argv[1:] or ["poll_cycle", "memory"]
    print(json.dumps({k: globals()[k]() for k in which}, indent=1))
