"""Seeded generator of the bundled dispatch scenarios (docs/scenario-format.md).

    .venv/bin/python scenarios/generate.py          # rewrites scenarios/*.csv and *.json
    .venv/bin/python scenarios/generate.py --holdout DIR   # 18 held-out variants (below)

PV: pvlib Ineichen clear sky (offline, ships its Linke turbidity table) at a Gansu edge node
(36.06 N, 103.83 E, 1520 m), transposed to a 30 deg south-facing array, 150 kWp, 14 % losses,
times a clear-sky index from a seeded cloud model (or the sandstorm / haze events).
IT load: P = P_idle + (P_max - P_idle) * u, u from a seeded job model (Poisson arrivals of
batch jobs with their own utilisation and duration, over a diurnal interactive base).
Aux (cooling, lighting): 2 kW + 12 % of IT + a midday temperature term.
Everything is deterministic for a given seed: the same files on every run.
"""
import json
import os
import random

import numpy as np
import pandas as pd
import pvlib

HERE = os.path.dirname(os.path.abspath(__file__))
LAT, LON, ALT, TZ = 36.06, 103.83, 1520, "Asia/Shanghai"
KWP = 150.0
P_IDLE, P_MAX = 25000.0, 110000.0

SITE = {
    "battery_wh": 250000, "soc_init_cpct": 5000, "soc_min_cpct": 1000, "soc_max_cpct": 9800,
    "reserve_s": 900, "charge_max_w": 100000, "discharge_max_w": 100000, "pcs_w": 100000,
    "eta_c_milli": 950, "eta_d_milli": 950, "grid_cap_w": 60000, "export_allowed": False,
    "export_margin_w": 1000, "ramp_w_s": 10000, "region": "northwest", "pv_peak_w": 150000,
}


def clear_sky_pv(day, ndays=1):
    times = pd.date_range(day, periods=1440 * ndays, freq="60s", tz=TZ)
    loc = pvlib.location.Location(LAT, LON, TZ, ALT)
    cs = loc.get_clearsky(times, model="ineichen")
    sp = loc.get_solarposition(times)
    poa = pvlib.irradiance.get_total_irradiance(30, 180, sp["apparent_zenith"], sp["azimuth"],
                                                cs["dni"], cs["ghi"], cs["dhi"])
    return np.clip(np.nan_to_num(poa["poa_global"].values) / 1000.0 * KWP * 1000 * 0.86, 0, None)


def clouds(rng, n, frac=0.35):
    """Clear-sky index: passing clouds, 2-20 min each, depth 0.25-0.7."""
    k = np.ones(n)
    t = 0
    while t < n:
        t += int(rng.expovariate(1.0 / 25))
        if rng.random() < frac:
            d = rng.randint(2, 20)
            k[t:t + d] = rng.uniform(0.25, 0.7)
            t += d
    return k


def jobs(rng, n, rate_per_h=0.6, base=0.25, log=None):
    """Utilisation 0..1: diurnal interactive base plus Poisson batch jobs. log: list to
    append each batch job to as (start minute, minutes, utilisation) (what the queue knew)."""
    m = np.arange(n) % 1440
    u = base + 0.1 * np.sin((m / 1440.0 - 0.35) * 2 * np.pi)
    t = 0
    while True:
        t += int(rng.expovariate(rate_per_h / 60.0))
        if t >= n:
            break
        d = rng.randint(20, 150)
        du = rng.uniform(0.1, 0.35)
        u[t:t + d] += du
        if log is not None:
            log.append((t, min(d, n - t), du))
    return np.clip(u, 0, 1)


BATCH_LEAD_S = 3600     # a batch job shows in the queue 1 h before it starts


def write_queue(name, log, planned=(), outdir=None):
    """NAME.queue.json: what the job queue knew (docs/scenario-format.md). log: the batch
    jobs of jobs() (known BATCH_LEAD_S ahead); planned: (id, start min, minutes, W) jobs
    known from the start of the scenario (planned the day before)."""
    recs = [{"id": "batch-%d" % i, "start": t * 60, "duration_s": d * 60,
             "power_w": int(round((P_MAX - P_IDLE) * du))}
            for i, (t, d, du) in enumerate(log)]
    recs += [{"id": jid, "start": t * 60, "duration_s": d * 60, "power_w": int(round(w)),
              "known_s": 0} for jid, t, d, w in planned]
    recs.sort(key=lambda r: (r["start"], r["id"]))
    with open(os.path.join(outdir or HERE, name + ".queue.json"), "w") as f:
        # one job a line: a reviewer reads the queue like a queue file
        f.write('{"lead_s": %d, "jobs": [\n%s\n]}\n' % (BATCH_LEAD_S, ",\n".join(
            json.dumps(r, sort_keys=True) for r in recs)))


def it_power(u):
    return P_IDLE + (P_MAX - P_IDLE) * u


def aux_power(it, n):
    m = np.arange(n) % 1440
    warm = np.clip(np.sin((m / 1440.0 - 0.3) * 2 * np.pi), 0, None)
    return 2000 + 0.12 * it + 4000 * warm


def hm(h, m=0, day=0):
    return day * 86400 + h * 3600 + m * 60


def sun(day, ndays=1):
    """Clear-sky peak and the local times PV starts/ends (> 2 % of peak) for the site."""
    cs = clear_sky_pv(day, 1)
    on = np.nonzero(cs > 0.02 * cs.max())[0]
    return {"pv_peak_w": int(round(cs.max())), "sun_rise_s": int(on[0]) * 60,
            "sun_set_s": int(on[-1]) * 60, "tz_s": 0}


def write(name, pv, it, aux, site, note, day):
    n = len(pv)
    pv = np.round(pv).astype(int)
    it = np.round(it).astype(int)
    aux = np.round(aux).astype(int)
    with open(os.path.join(HERE, name + ".csv"), "w") as f:
        f.write("t_s,pv_w,it_load_w,aux_load_w\n")
        for i in range(n):
            f.write("%d,%d,%d,%d\n" % (i * 60, pv[i], it[i], aux[i]))
    s = dict(SITE)
    s.update(sun(day))
    s.update(site)
    s["name"] = name
    s["note"] = note
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(s, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    # clear summer day
    rng = random.Random(101)
    pv = clear_sky_pv("2024-06-21")
    q = []
    it = it_power(jobs(rng, 1440, log=q))
    write_queue("clear_summer", q)
    write("clear_summer", pv, it, aux_power(it, 1440), {},
          "Clear summer day, batch jobs over a diurnal base; seed 101", "2024-06-21")

    # intermittent clouds
    rng = random.Random(202)
    pv = clear_sky_pv("2024-07-15") * clouds(rng, 1440, 0.45)
    q = []
    it = it_power(jobs(rng, 1440, 0.8, log=q))
    write_queue("clouds", q)
    write("clouds", pv, it, aux_power(it, 1440), {},
          "Intermittent clouds (2-20 min, depth 25-70 %), busy job queue; seed 202", "2024-07-15")

    # the seed's sandstorm: PV falls 70 % within an hour from 14:30 while a 2 h job starts
    # at 15:00; the cloud schedule asks for 95 % SOC before it, then the link is lost
    rng = random.Random(303)
    pv = clear_sky_pv("2024-04-15")
    k = np.ones(1440)
    a, b = 14 * 60 + 30, 15 * 60 + 30
    k[a:b] = np.linspace(1.0, 0.3, b - a)
    k[b:] = 0.3
    pv = pv * k
    q = []
    u = jobs(rng, 1440, 0.3, 0.2, log=q)
    u[15 * 60:17 * 60] = np.clip(u[15 * 60:17 * 60] + 0.55, 0, 1)
    it = it_power(u)
    write_queue("sandstorm", q, [("modelling-3d", 15 * 60, 120, 0.55 * (P_MAX - P_IDLE))])
    # the job window asks for the seed's "zero grid intervention": aim_w 0 (the cloud
    # knows the job's load holds for 2 h; the site's 1 kW export margin elsewhere)
    sched = [{"t0": hm(10), "t1": hm(14, 30), "soc_cpct": 9500, "exp": hm(15)},
             {"t0": hm(15), "t1": hm(17), "soc_cpct": 2500, "exp": hm(17), "aim_w": 0}]
    write("sandstorm", pv, it, aux_power(it, 1440),
          {"schedule": sched, "link_lost_s": hm(10, 30), "soc_init_cpct": 4000},
          "Seed case: sandstorm cuts PV 70 % within an hour from 14:30, a 2 h 3-D modelling "
          "job 15:00-17:00; schedule: 95 % SOC by 14:30, then run the job from PV + storage; "
          "link lost 10:30; seed 303", "2024-04-15")

    # winter low PV (short day, haze)
    rng = random.Random(404)
    pv = clear_sky_pv("2024-12-21") * 0.6
    q = []
    it = it_power(jobs(rng, 1440, 0.5, log=q))
    write_queue("winter", q)
    write("winter", pv, it, aux_power(it, 1440) * 0.7, {"soc_init_cpct": 3000},
          "Winter solstice with haze (60 % of clear sky); seed 404", "2024-12-21")

    # night compute burst 01:00-03:30
    rng = random.Random(505)
    pv = clear_sky_pv("2024-09-10")
    q = []
    u = jobs(rng, 1440, 0.3, log=q)
    u[60:210] = np.clip(u[60:210] + 0.6, 0, 1)
    it = it_power(u)
    write_queue("night_burst", q, [("night-burst", 60, 150, 0.6 * (P_MAX - P_IDLE))])
    sched = [{"t0": hm(0), "t1": hm(1), "soc_cpct": 8000, "exp": hm(1)}]
    write("night_burst", pv, it, aux_power(it, 1440),
          {"soc_init_cpct": 7000, "schedule": sched, "link_lost_s": hm(0, 10)},
          "Night compute burst 01:00-03:30 (+60 % utilisation) before sunrise; seed 505", "2024-09-10")

    # peak shaving: evening peak above the cap
    rng = random.Random(606)
    pv = clear_sky_pv("2024-08-05") * clouds(rng, 1440, 0.2)
    q = []
    u = jobs(rng, 1440, 0.4, log=q)
    u[18 * 60:22 * 60] = np.clip(u[18 * 60:22 * 60] + 0.45, 0, 1)
    it = it_power(u)
    write_queue("peak_shaving", q, [("evening-batch", 18 * 60, 240, 0.45 * (P_MAX - P_IDLE))])
    write("peak_shaving", pv, it, aux_power(it, 1440), {"grid_cap_w": 55000},
          "Evening peak 18:00-22:00 above the 55 kW import cap; seed 606", "2024-08-05")

    # zero export under a load drop: heavy load at noon falls to idle in one minute
    rng = random.Random(707)
    pv = clear_sky_pv("2024-05-20")
    q = []
    u = jobs(rng, 1440, 0.2, 0.2, log=q)
    u0 = float(u[10 * 60:12 * 60].mean())
    u[10 * 60:12 * 60] = 0.9
    u[12 * 60:13 * 60] = 0.0
    it = it_power(u)
    # the queue knows the noon job and when it ends, not the idle hour after it
    q = [j for j in q if j[0] + j[1] <= 10 * 60 or j[0] >= 13 * 60]
    write_queue("load_drop", q, [("noon-full", 10 * 60, 120, (0.9 - u0) * (P_MAX - P_IDLE))])
    write("load_drop", pv, it, aux_power(it, 1440), {"soc_init_cpct": 8500},
          "Full compute load at noon drops to idle in one minute under full sun; the battery "
          "starts nearly full, so zero export needs charging and curtailment; seed 707", "2024-05-20")

    # 3-day mixed run: clear, cloudy, dusty
    rng = random.Random(808)
    pv = clear_sky_pv("2024-10-01", 3)
    k = np.concatenate([np.ones(1440), clouds(rng, 1440, 0.5), np.full(1440, 0.45)])
    q = []
    it = it_power(jobs(rng, 4320, 0.6, log=q))
    write_queue("mixed_3day", q)
    write("mixed_3day", pv * k, it, aux_power(it, 4320), {},
          "Three days: clear, cloudy, dusty; seed 808", "2024-10-01")


def holdout(outdir):
    """Held-out variants (seeds 11-13; not shipped, not in `make bench`): the same models
    with other seeds and dates: a clear day, a cloudy day, and four 3-day runs (cloudy /
    dusty / clear in several orders). A rule tuned on the shipped scenarios is checked on
    these before it is adopted (docs/dispatch.md)."""
    global HERE
    os.makedirs(outdir, exist_ok=True)
    home, HERE = HERE, outdir
    try:
        for s in (11, 12, 13):
            day = "2024-06-%02d" % (10 + s)      # PV and the site's sun times: one date
            rng = random.Random(s)
            pv = clear_sky_pv(day) * clouds(rng, 1440, 0.45)
            it = it_power(jobs(rng, 1440, 0.8))
            write("clouds_%d" % s, pv, it, aux_power(it, 1440), {}, "holdout", day)
            day = "2024-05-%02d" % (10 + s)
            rng = random.Random(s)
            pv = clear_sky_pv(day)
            it = it_power(jobs(rng, 1440, 0.5))
            write("clear_%d" % s, pv, it, aux_power(it, 1440), {}, "holdout", day)
            day = "2024-09-%02d" % (1 + s)
            for name, ks in (("mix_cdc", (1, "c", 0.45)), ("mix_dcl", (0.45, 1, 1)),
                             ("mix_ccd", ("c", 1, 0.4)), ("mix_clr", (1, 1, 1))):
                rng = random.Random(s + 100)
                parts = [clouds(rng, 1440, 0.5) if k == "c" else np.full(1440, float(k))
                         for k in ks]
                pv = clear_sky_pv(day, 3) * np.concatenate(parts)
                it = it_power(jobs(rng, 4320, 0.6))
                write("%s_%d" % (name, s), pv, it, aux_power(it, 4320), {}, "holdout", day)
    finally:
        HERE = home    # a later main() in this process writes the shipped ones again


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--holdout":
        holdout(sys.argv[2])
    elif len(sys.argv) == 1:
        main()
    else:
        sys.exit("usage: generate.py [--holdout DIR]")
