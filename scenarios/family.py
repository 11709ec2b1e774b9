"""Seeded scenario family for the dispatch bench (docs/scenario-format.md, "Scenario family").

    .venv/bin/python scenarios/family.py DIR [--n 40] [--days 7] [--seed 1]

Writes n scenario-weeks (NAME.csv, NAME.json and, when a job queue knew something,
NAME.queue.json) into DIR; the same files for the same (n, days, seed) on every run. Not
committed: `make bench` generates them into a temporary folder (host/edgegw/bench_dispatch.py).

Every scenario is one spec (a dict, `specs()`), drawn from random.Random(seed * 1000 + i):
  climate  clear (passing clouds), dust (1-3 dusty days, 35-65 % of clear sky), overcast
           (a run of 2-4 days at 10-35 %), snow (winter; panels covered the day it snows,
           clearing over the next days), fronts (clear mornings, a front in the afternoon,
           a grey day after)
  load     batch (Poisson jobs from a queue over a diurnal base; the queue's knowledge is
           the job list: stated power within 10 % of the real one, known 0.5-6 h ahead;
           a nightly job known a day ahead), inference (diurnal base, minute noise, and
           unannounced spikes no queue knows), each with plain aux (2 kW-ish + 12 % of IT
           + a midday term) or heat-pump aux (a thermostat with hysteresis: compressor
           cycling, more on cold mornings); weekends lighter
  site     IT node 10-40 kW idle, 2.5-4x that at full use; PV 0.3-1.2 of the daily load;
           PCS 40-80 % of the mean load; battery 0.5-4 h of PCS power (reserve_s: a quarter
           of it at the mean IT load, at most 900 s); an import cap in
           half of them (70-90 % of the no-battery peak); export allowed in about 30 %;
           grid outages (0.5-6 h, on 15 min boundaries) in about 30 %
Climates and load kinds are dealt round-robin (5 climates x 4 load kinds, twice in 40),
battery hours cycle 0.5, 1, 2, 3, 4, so every combination appears.
  tariff   about 60 % of the weeks get a site.tariff (`tariff_spec`, from its own RNG stream,
           so the weather and load draws of every week are what they were without it):
           the Guangdong 1-10 kV shape (scenarios/tariffs/guangdong_1_10kv.json, flat price
           0.55-0.75 CNY/kWh), a two-peak shape (valley 0-8, peaks 8-11 and 17-22, Jul-Aug
           sharp 14-15 and 20-21) or a flat price with a heavy demand charge; demand 20-45
           CNY/kW.month, wear 0.02-0.08 CNY/kWh, an export price where export is allowed;
           with `start_date` (the week's date) so the tariff knows the month
"""
import json
import os
import random
import sys

import numpy as np

CLIMATES = ("clear", "dust", "overcast", "snow", "fronts")
LOADS = ("batch", "inference", "batch_hp", "inference_hp")
BATTERY_H = (0.5, 1, 2, 3, 4)
SITES = {   # name: lat, lon, altitude m, time zone (clear-sky PV by pvlib, offline)
    "gansu": (36.06, 103.83, 1520, "Asia/Shanghai"),
    "harbin": (45.75, 126.63, 150, "Asia/Shanghai"),
    "chengdu": (30.66, 104.07, 500, "Asia/Shanghai"),
}
DATES = {"clear": ("2024-05-06", "2024-06-17", "2024-07-22", "2024-08-12"),
         "dust": ("2024-03-18", "2024-04-08", "2024-04-29", "2024-05-13"),
         "overcast": ("2024-06-10", "2024-10-14", "2024-11-04", "2024-09-16"),
         "snow": ("2024-01-08", "2024-01-29", "2024-02-12", "2024-12-09"),
         "fronts": ("2024-03-04", "2024-04-15", "2024-09-30", "2024-10-21")}
CLIMATE_SITE = {"clear": "gansu", "dust": "gansu", "overcast": "chengdu", "snow": "harbin",
                "fronts": "gansu"}
DAY = 1440


def specs(n=40, days=7, seed=1):
    """The family's specs, deterministic by (n, days, seed)."""
    out = []
    for i in range(n):
        rng = random.Random(seed * 1000 + i)
        climate = CLIMATES[i % len(CLIMATES)]
        load = LOADS[(i // len(CLIMATES)) % len(LOADS)]
        bh = BATTERY_H[i % len(BATTERY_H)] if (i // 20) % 2 == 0 else \
            BATTERY_H[(i + 2) % len(BATTERY_H)]
        outages = []
        if rng.random() < 0.3 or i % 10 == 3:
            for _ in range(rng.randint(1, 2)):
                q = rng.randrange(0, days * 96 - 4)     # 15 min slots
                outages.append((q * 15, min(days * DAY - q * 15, 15 * rng.randint(2, 24))))
        out.append({
            "name": "f%02d_%s_%s_%sh" % (i, climate, load, str(bh).replace(".", "p")),
            "seed": seed * 1000 + i, "climate": climate, "load": load, "days": days,
            "site": CLIMATE_SITE[climate], "date": rng.choice(DATES[climate]),
            "p_idle_w": rng.randint(10, 40) * 1000, "p_max_x": rng.uniform(2.5, 4.0),
            "pv_ratio": rng.uniform(0.3, 1.2), "pcs_ratio": rng.uniform(0.4, 0.8),
            "battery_h": bh, "cap_ratio": rng.uniform(0.7, 0.9) if rng.random() < 0.5 else None,
            "export_allowed": rng.random() < 0.3, "outages": outages,
        })
        out[-1]["tariff"] = tariff_spec(seed, i, out[-1]["export_allowed"])
    return out


# ---- tariffs ---------------------------------------------------------------------------

_REST = [0] * 8 + [1, 1, 2, 2, 1, 1, 2, 2, 2, 2, 2] + [1] * 5     # Guangdong, not Jul-Sep
_SUMMER = [0] * 8 + [1, 1, 2, 3, 1, 1, 2, 3, 3, 2, 2] + [1] * 5
_TWO_PEAK = [0] * 8 + [2, 2, 2] + [1] * 6 + [2] * 5 + [1, 1]
_TWO_PEAK_SUMMER = [0] * 8 + [2, 2, 2] + [1, 1, 1, 3, 1, 1] + [2, 2, 2, 3, 2] + [1, 1]


def tariff_spec(seed, i, export_allowed):
    """The week's site.tariff or None, from random.Random("tariff:SEED:I"): a stream of
    its own, so adding tariffs changed no weather or load draw."""
    rng = random.Random("tariff:%d:%d" % (seed, i))
    if rng.random() >= 0.6:
        return None
    kind = rng.choice(("guangdong", "two_peak", "demand"))
    flat = rng.uniform(0.55, 0.75)
    if kind == "demand":
        ratios, seasons = (1.0,), [(list(range(1, 13)), [0] * 24)]
    elif kind == "guangdong":
        ratios = (0.38, 1.0, 1.7, 1.7 * 1.25)
        seasons = [([7, 8, 9], _SUMMER), ([1, 2, 3, 4, 5, 6, 10, 11, 12], _REST)]
    else:
        ratios = (0.35, 1.0, 1.6, 1.6 * 1.2)
        seasons = [([7, 8], _TWO_PEAK_SUMMER), ([1, 2, 3, 4, 5, 6, 9, 10, 11, 12], _TWO_PEAK)]
    names = ("valley", "flat", "peak", "sharp") if len(ratios) > 1 else ("flat",)
    t = {"name": "family %s, flat %.4f CNY/kWh" % (kind, flat),
         "periods": [{"name": n, "price_cfen": int(round(flat * r * 10000))}
                     for n, r in zip(names, ratios)],
         "seasons": [{"months": m, "hours": list(h)} for m, h in seasons],
         "demand_cfen_kw": int(round(rng.uniform(20, 45) * (2 if kind == "demand" else 1))
                               * 10000),
         "cycle_cost_cfen": int(round(rng.uniform(0.02, 0.08) * 10000))}
    if export_allowed:
        t["export_cfen"] = int(round(rng.uniform(0.30, 0.40) * 10000))
    return t


# ---- weather ---------------------------------------------------------------------------

def clear_sky_w(site, day, ndays, kwp):
    """1-minute clear-sky PV W of a kwp array (30 deg south, 14 % losses), local time."""
    import pandas as pd
    import pvlib
    lat, lon, alt, tz = SITES[site]
    times = pd.date_range(day, periods=DAY * ndays, freq="60s", tz=tz)
    loc = pvlib.location.Location(lat, lon, tz, alt)
    cs = loc.get_clearsky(times, model="ineichen")
    sp = loc.get_solarposition(times)
    poa = pvlib.irradiance.get_total_irradiance(30, 180, sp["apparent_zenith"], sp["azimuth"],
                                                cs["dni"], cs["ghi"], cs["dhi"])
    return np.clip(np.nan_to_num(poa["poa_global"].values) / 1000.0 * kwp * 1000 * 0.86, 0,
                   None)


def _clouds(rng, frac, depth=(0.25, 0.7)):
    k = np.ones(DAY)
    t = 0
    while t < DAY:
        t += int(rng.expovariate(1.0 / 25))
        if rng.random() < frac:
            d = rng.randint(2, 20)
            k[t:t + d] = rng.uniform(*depth)
            t += d
    return k


def _smooth(rng, lo, hi):
    # a slowly varying index between lo and hi (hourly knots, linear in between)
    knots = [rng.uniform(lo, hi) for _ in range(26)]
    return np.interp(np.arange(DAY) / 60.0, np.arange(26), knots)


def sky_index(rng, climate, days):
    """Clear-sky index per minute for the week; a list of day kinds in the note."""
    kinds = ["clear"] * days
    if climate == "dust":
        a = rng.randrange(days)
        for d in range(a, min(days, a + rng.randint(1, 3))):
            kinds[d] = "dust"
    elif climate == "overcast":
        a = rng.randrange(max(1, days - 2))
        for d in range(a, min(days, a + rng.randint(2, 4))):
            kinds[d] = "overcast"
    elif climate == "snow":
        a = rng.randrange(days)
        kinds[a] = "snow"
        for j, k in enumerate(("cover2", "cover6")):
            if a + 1 + j < days:
                kinds[a + 1 + j] = k
    elif climate == "fronts":
        for d in range(days):
            kinds[d] = ("clear", "front", "grey")[(d + rng.randrange(2)) % 3]
    parts = []
    for k in kinds:
        if k == "clear":
            parts.append(_clouds(rng, 0.12))
        elif k == "dust":
            parts.append(_smooth(rng, 0.35, 0.65) * _clouds(rng, 0.05))
        elif k == "overcast":
            parts.append(_smooth(rng, 0.1, 0.35))
        elif k == "snow":
            parts.append(np.full(DAY, 0.03))
        elif k in ("cover2", "cover6"):
            x = 0.2 if k == "cover2" else 0.6       # panels clearing
            parts.append(np.clip(_smooth(rng, x - 0.1, x + 0.1), 0, 1))
        elif k == "front":
            h = rng.uniform(11, 16) * 60
            m = np.arange(DAY)
            ramp = np.clip((m - h) / 60.0, 0, 1)
            parts.append((1 - 0.7 * ramp) * _clouds(rng, 0.3))
        else:   # grey: the day after a front
            parts.append(_smooth(rng, 0.2, 0.5) * _clouds(rng, 0.4))
    return np.concatenate(parts), kinds


# ---- loads -----------------------------------------------------------------------------

def _weekend(date, days):
    import datetime
    d0 = datetime.date.fromisoformat(date)
    return [(d0 + datetime.timedelta(days=d)).weekday() >= 5 for d in range(days)]


def it_load(rng, sp, wk):
    """-> (IT W per minute, queue records, unannounced spikes [(start min, min, W)])."""
    n = sp["days"] * DAY
    p0 = float(sp["p_idle_w"])
    span = p0 * (sp["p_max_x"] - 1)
    m = np.arange(n)
    day = m // DAY
    tod = (m % DAY) / float(DAY)
    wkd = np.array([wk[d] for d in day])
    jobs, spikes = [], []
    if sp["load"].startswith("batch"):
        u = 0.22 + 0.1 * np.sin((tod - 0.35) * 2 * np.pi) - 0.06 * wkd
        t = 0
        while True:
            rate = 0.5 if not wk[min(t // DAY, len(wk) - 1)] else 0.2
            t += int(rng.expovariate(rate / 60.0)) + 1
            if t >= n:
                break
            d = min(rng.randint(20, 180), n - t)
            du = rng.uniform(0.1, 0.4)
            u[t:t + d] += du
            jobs.append({"id": "job-%d" % len(jobs), "start": t * 60, "duration_s": d * 60,
                         "power_w": int(round(span * du * rng.uniform(0.9, 1.1))),
                         "known_s": max(0, t * 60 - int(rng.uniform(0.5, 6) * 3600))})
        for d in range(sp["days"]):       # the nightly training run, planned a day ahead
            if not wk[d]:
                a, dur = d * DAY + 60 + rng.randrange(60), rng.randint(120, 200)
                dur = min(dur, n - a)
                du = rng.uniform(0.3, 0.5)
                u[a:a + dur] += du
                jobs.append({"id": "nightly-%d" % d, "start": a * 60, "duration_s": dur * 60,
                             "power_w": int(round(span * du)),
                             "known_s": max(0, (a - DAY) * 60)})
        u = np.clip(u, 0, 1)
        it = p0 + span * u
    else:
        # inference: requests follow the day, minute noise, unannounced spikes
        base = 0.3 + 0.25 * np.clip(np.sin((tod - 0.3) * 2 * np.pi), -0.4, 1) - 0.1 * wkd
        noise = np.zeros(n)
        x = 0.0
        s = rng.uniform(0.04, 0.1)
        for i in range(n):
            x = 0.7 * x + rng.gauss(0, s)
            noise[i] = x
        u = base * (1 + noise)
        t = 0
        while True:
            t += int(rng.expovariate(rng.uniform(0.08, 0.25) / 60.0)) + 1
            if t >= n:
                break
            d = min(rng.randint(5, 40), n - t)
            du = rng.uniform(0.2, 0.6)
            u[t:t + d] += du
            spikes.append((t, d, int(round(span * du))))
        it = p0 + span * np.clip(u, 0, 1)
    return it, jobs, spikes


def outdoor_c(rng, climate, n):
    """Outdoor temperature C per minute: cold mornings (minimum ~06:00), warm afternoons."""
    mean = {"snow": -12.0, "overcast": 12.0, "dust": 14.0, "fronts": 10.0,
            "clear": 24.0}[climate] + rng.uniform(-3, 3)
    amp = rng.uniform(4, 9)
    tod = (np.arange(n) % DAY) / float(DAY)
    drift = np.interp(np.arange(n) / DAY, np.arange(n // DAY + 2),
                      [rng.uniform(-3, 3) for _ in range(n // DAY + 2)])
    return mean + drift + amp * np.sin((tod - 0.375) * 2 * np.pi)


def aux_load(rng, sp, it, temp):
    n = len(it)
    if not sp["load"].endswith("_hp"):
        tod = (np.arange(n) % DAY) / float(DAY)
        warm = np.clip(np.sin((tod - 0.3) * 2 * np.pi), 0, None)
        return 2000 + 0.12 * it + 4000 * warm
    # heat pump on a thermostat: room at 20 C +-0.75 heating (or 24 C cooling), loss to the
    # outside, IT heat helps; the compressor runs at its rated power or not at all
    hp_w = max(4000.0, 0.25 * float(np.mean(it)))
    ua = hp_w * 3.0 / 30.0           # W/K: the heat pump (COP 3) holds a 30 K difference
    cap = ua * 90.0                  # J/K x 60 s: a room cools ~1 K in ~1.5 h with it off
    room = 20.0
    on = False
    out = np.zeros(n)
    for i in range(n):
        heat = temp[i] < 18.0
        if heat:
            on = room < 19.25 or (on and room < 20.75)
            q = (3.0 * hp_w if on else 0.0) - ua * (room - temp[i]) + 0.02 * it[i]
        else:
            on = room > 24.75 or (on and room > 23.25)
            q = -(3.0 * hp_w if on else 0.0) - ua * (room - temp[i]) + 0.05 * it[i]
        room += q / cap
        out[i] = (hp_w if on else 0.0)
    return 1500 + 0.05 * it + out


# ---- one scenario ----------------------------------------------------------------------

def lead_spec(sp, lead):
    """The `lead` days before a spec's week (the learning lead-in, docs/scenario-format.md):
    the same site and load process, its own weather and load draws (another seed), no
    outages; the week itself is drawn exactly as without it."""
    import datetime
    d0 = datetime.date.fromisoformat(sp["date"]) - datetime.timedelta(days=lead)
    return dict(sp, seed=sp["seed"] + 500000, days=lead, date=d0.isoformat(), outages=[])


def build(sp, kwp=None):
    """-> (columns dict, site dict, queue records, meta) of one spec. kwp: the PV size
    (default: from the spec's own load draw; a lead-in takes its week's)."""
    rng = random.Random(sp["seed"])
    n = sp["days"] * DAY
    wk = _weekend(sp["date"], sp["days"])
    it, jobs, spikes = it_load(rng, sp, wk)
    temp = outdoor_c(rng, sp["climate"], n)
    aux = aux_load(rng, sp, it, temp)
    mean_w = float(np.mean(it + aux))
    if kwp is None:
        kwp = max(5.0, sp["pv_ratio"] * mean_w * 24 / 1000.0 / 5.0)
    cs = clear_sky_w(sp["site"], sp["date"], sp["days"], kwp)
    k, kinds = sky_index(rng, sp["climate"], sp["days"])
    pv = cs * k
    ok = np.ones(n, dtype=int)
    for a, d in sp["outages"]:
        ok[a:a + d] = 0
    pcs = int(round(sp["pcs_ratio"] * mean_w, -2))
    peak_nb = float(np.max(np.where(ok > 0, it + aux - pv, 0)))
    on = np.nonzero(cs[:DAY] > 0.02 * cs[:DAY].max())[0]
    site = {"battery_wh": int(round(sp["battery_h"] * pcs)), "pcs_w": pcs,
            "charge_max_w": pcs, "discharge_max_w": pcs, "soc_init_cpct": 5000,
            "soc_min_cpct": 1000, "soc_max_cpct": 9500,
            # the ride-through reserve a site would set: a quarter of the battery at the
            # mean IT load, at most 15 min (900 s on a 0.5 h battery would lock it all)
            "reserve_s": int(min(900, 0.25 * sp["battery_h"] * pcs * 3600 / float(np.mean(it))))
            // 60 * 60,
            "eta_c_milli": 950, "eta_d_milli": 950, "export_allowed": sp["export_allowed"],
            "ramp_w_s": max(1, pcs // 10), "region": "national",
            "pv_peak_w": int(round(cs[:DAY].max())), "sun_rise_s": int(on[0]) * 60,
            "sun_set_s": int(on[-1]) * 60, "tz_s": 0, "name": sp["name"],
            "note": "family: %s, %s load, %s h battery, days %s%s; seed %d" % (
                sp["climate"], sp["load"], sp["battery_h"], ",".join(kinds),
                ", outages %s" % sp["outages"] if sp["outages"] else "", sp["seed"])}
    if sp["cap_ratio"] is not None:
        site["grid_cap_w"] = int(round(sp["cap_ratio"] * peak_nb, -2))
    if sp.get("tariff") is not None:
        site["tariff"] = sp["tariff"]
        site["start_date"] = sp["date"]     # t_s 0 is this local midnight: the month
    cols = {"t_s": np.arange(n) * 60, "pv_w": np.round(pv).astype(int),
            "it_load_w": np.round(it).astype(int), "aux_load_w": np.round(aux).astype(int)}
    if sp["outages"]:
        cols["grid_ok"] = ok
    meta = {"spikes": spikes, "day_kinds": kinds, "outages": sp["outages"], "kwp": kwp}
    return cols, site, jobs, meta


def write(outdir, sp, lead=0):
    """NAME.csv/.json/.queue.json; with lead > 0 also NAME.lead.csv:
    the lead days before the week, for the gateway alone to learn from."""
    cols, site, jobs, meta = build(sp)
    _write_rows(outdir, sp["name"], cols, jobs)
    with open(os.path.join(outdir, sp["name"] + ".json"), "w") as f:
        json.dump(site, f, indent=1, sort_keys=True)
        f.write("\n")
    if lead > 0:
        lc = build(lead_spec(sp, lead), kwp=meta["kwp"])[0]
        _write_rows(outdir, sp["name"] + ".lead", lc, [])   # only the gateway learns from it
    return meta


def _write_rows(outdir, name, cols, jobs):
    keys = list(cols)
    a = np.column_stack([cols[k] for k in keys]).astype(np.int64)
    with open(os.path.join(outdir, name + ".csv"), "w") as f:
        f.write(",".join(keys) + "\n")
        f.write("\n".join(",".join(str(int(x)) for x in row) for row in a.tolist()) + "\n")
    if jobs:
        with open(os.path.join(outdir, name + ".queue.json"), "w") as f:
            f.write('{"jobs": [\n%s\n]}\n' % ",\n".join(json.dumps(j, sort_keys=True)
                                                       for j in jobs))


def generate(outdir, n=40, days=7, seed=1, only=None, lead=0):
    """Write the family into outdir; -> {name: meta (unannounced spikes, day kinds,
    outages)}. only: indices of specs() to write (a quick subset). lead: days of a
    learning lead-in before every week (NAME.lead.csv; 0: none)."""
    os.makedirs(outdir, exist_ok=True)
    out = {}
    for i, sp in enumerate(specs(n, days, seed)):
        if only is None or i in only:
            out[sp["name"]] = write(outdir, sp, lead)
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(prog="scenarios/family.py")
    ap.add_argument("outdir")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lead", type=int, default=0, help="days of a learning lead-in")
    a = ap.parse_args()
    names = generate(a.outdir, a.n, a.days, a.seed, lead=a.lead)
    print("wrote %d scenarios to %s" % (len(names), a.outdir))
    sys.exit(0)
