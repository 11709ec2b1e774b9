"""`make soak`: an accelerated 7-day run of the virtual gateway on a repeating day of the
`clouds` scenario, faults injected at random (seeded) times: BMS alarm, BMS silent, PCS
fault, a meter silent, a CRC/noise burst, the broker killed. Reports heap peak and growth,
telemetry records lost/duplicated, interlock reaction times, dispatch metrics, as JSON in
hil_tests/results/soak.json and a row of the summary.

Knobs (environment): EDGEGW_SOAK_DAYS (default 7), EDGEGW_SOAK_SPEED (default 600: a
site day in 144 real seconds; --speed overrides), EDGEGW_SOAK_SEED (default 1)."""
import json
import os
import random
import time

import pytest

from hilkit.cloud import KEY_HEX
from hilkit.faults import LineFaults
from hilkit.plugin import DEVICE_ID, RESULTS
from hilkit.scenario import BAT, DAY0, GRID, SOC, Scenario, energy_wh

pytestmark = [pytest.mark.soak, pytest.mark.sil_only]

POLL_MS = 60000        # device poll period (site): 100 ms real at 600x
CONTROL_MS = 10000     # control period (site)
FAULTS = ("bms_alarm", "bms_silent", "pcs_fault", "pv_silent", "line_noise", "broker_down")


def _plan(days, rng):
    """[(site s from start, kind, duration s)]: one fault every 3-9 hours."""
    out = []
    t = 3600.0 * rng.uniform(2, 6)
    while t < days * 86400 - 7200:
        kind = rng.choice(FAULTS)
        dur = {"bms_alarm": 600, "bms_silent": 900, "pcs_fault": 600, "pv_silent": 1800,
               "line_noise": 3600, "broker_down": 1200}[kind]
        out.append((t, kind, dur))
        t += dur + 3600.0 * rng.uniform(3, 9)
    return out


def test_soak_7_days(launch, broker, cloud, report, hil):
    days = float(os.environ.get("EDGEGW_SOAK_DAYS", "7"))
    speed = hil.speed or int(os.environ.get("EDGEGW_SOAK_SPEED", "600"))
    rng = random.Random(int(os.environ.get("EDGEGW_SOAK_SEED", "1")))
    report(scenario="soak %.3g days (clouds, x%d)" % (days, speed),
           fault="random: " + ", ".join(FAULTS))
    sc = Scenario("clouds")
    sim = sc.sim(0, soc_cpct=6000, rec_every=60.0)
    link = {"host": broker.host, "port": broker.port, "key": KEY_HEX, "keepalive_s": 2,
            "grace_s": 1, "recover_s": 1, "backoff_min_ms": 500, "backoff_max_ms": 1000}
    cfg = sc.config(DEVICE_ID, period_ms=POLL_MS, control={"period_ms": CONTROL_MS},
                    safety={"clean_s": 600}, link=link, status_s=300, baud=115200)
    cloud.clock = lambda: sim.t
    time.sleep(1.2)   # the broker's autosave holds the cloud's session before any kill
    gw = launch(cfg, sim, speed=speed)
    t0 = sim.t
    plan = _plan(days, rng)
    heap = []          # (site day, alloc, free, peak)
    reactions = []     # (kind, site s from fault to PCS 0 W + stop)
    done = []
    lf = None
    i = 0
    active = None      # (kind, t_end, t_inject_real)
    next_heap = 0.0
    while sim.t - t0 < days * 86400:
        assert gw.alive(), "gateway died:\n" + gw.output[-3000:]
        el = sim.t - t0
        if active is None and i < len(plan) and el >= plan[i][0]:
            kind = plan[i][1]
            active = (kind, el + plan[i][2], time.monotonic())
            i += 1
            if kind == "bms_alarm":
                sim.bms_alarm = 1 << 2
            elif kind == "bms_silent":
                gw.devices["bms"].mode = "silent"
            elif kind == "pcs_fault":
                sim.pcs_fault = 1 << 7
            elif kind == "pv_silent":
                gw.devices["pv"].mode = "silent"
            elif kind == "line_noise":
                lf = [LineFaults(gw, n, crc=0.1, noise=0.1, seed=i) for n in gw.devices]
            elif kind == "broker_down":
                broker.stop()
        if active is not None and el >= active[1]:
            kind, _, t_inj = active
            if kind in ("bms_alarm", "bms_silent", "pcs_fault"):
                tz = next((t for t, ch in list(gw.devices["pcs"].writes)
                           if t >= t_inj and ch.get("p_set_w") == 0), None)
                reactions.append((kind, None if tz is None else round((tz - t_inj) * speed, 1)))
            sim.bms_alarm = 0
            sim.pcs_fault = 0
            gw.devices["bms"].mode = "ok"
            gw.devices["pv"].mode = "ok"
            if lf:
                for f in lf:
                    f.remove()
                lf = None
            if kind == "broker_down":
                broker.start()
            done.append((round(el / 3600.0, 2), kind))
            active = None
        if el >= next_heap:
            s = gw.status(False)
            h = s["heap"]
            heap.append((round(el / 86400.0, 3), h["alloc"], h["free"], h.get("peak")))
            next_heap = el + 3 * 3600
        time.sleep(0.05)
    if not broker.running:
        broker.start()
    s = gw.wait(lambda s: s["link"]["state"] == "ONLINE" and s["link"]["ring_n"] == 0, 60,
                points=False)
    time.sleep(2.0)
    rep = cloud.report()
    rows = sim.rec
    cap = sc.site["grid_cap_w"]
    alloc = [x[1] for x in heap]
    peaks = [x[3] for x in heap if x[3] is not None]
    res = {
        "days": days, "speed": speed, "faults": done,
        # alloc after gc.collect() every 3 site hours: its max is the resident peak and
        # last - first the growth; mem_peak is micropython's own high-water mark as status()
        # reports it (on the unix port it is not the GC heap's and reads far too high)
        "heap": {"samples": heap, "alloc_first": alloc[0], "alloc_last": alloc[-1],
                 "alloc_max": max(alloc), "growth_b": alloc[-1] - alloc[0],
                 "mem_peak": max(peaks) if peaks else None},
        "records": {"received": rep["received"], "lost": rep["lost"], "dup": rep["dup"]},
        "interlock_s": reactions,
        "dispatch": {"grid_import_kwh": round(energy_wh(rows, GRID) / 1000, 1),
                     "grid_export_kwh": round(energy_wh(rows, GRID, -1) / 1000, 1),
                     "battery_out_kwh": round(energy_wh(rows, BAT) / 1000, 1),
                     "battery_in_kwh": round(energy_wh(rows, BAT, -1) / 1000, 1),
                     "grid_peak_w": int(max(r[GRID] for r in rows)), "grid_cap_w": cap,
                     "minutes_over_cap": sum(1 for r in rows if r[GRID] > cap * 1.02),
                     "soc_min_cpct": min(r[SOC] for r in rows),
                     "soc_max_cpct": max(r[SOC] for r in rows)},
        "link": s["link"], "errors": s["errors"], "nerr": s["nerr"],
        "safety_trips": s["safety"]["trips"],
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "soak.json"), "w") as f:
        json.dump(res, f, indent=1)
    rt = [x[1] for x in reactions if x[1] is not None]
    report.figure("heap %d -> %d B (max %d), records lost %d dup %d of %d, interlock max %s s "
                  "site, import %.0f kWh, peak %d W" % (
                      alloc[0], alloc[-1], max(alloc), rep["lost"], rep["dup"],
                      rep["received"], max(rt) if rt else "-",
                      res["dispatch"]["grid_import_kwh"], res["dispatch"]["grid_peak_w"]))
    report.metric(**{k: res[k] for k in ("heap", "records", "interlock_s", "dispatch")})
    assert len(done) >= max(1, int(days * 2))
    assert rep["lost"] == 0, rep
    # stale = 3 missed polls; each miss also waits out (retries + 1) timeouts of 50 ms of
    # REAL time, which at this speed-up is (retries + 1) x 50 ms x speed of site time
    miss_s = POLL_MS / 1000 + 2 * 0.05 * speed
    assert all(x[1] is not None and x[1] <= 3 * miss_s + 60 for x in reactions), reactions
    assert alloc[-1] - alloc[0] < 16384, heap
