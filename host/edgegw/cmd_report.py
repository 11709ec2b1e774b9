"""`edgegw report`: daily energy flows, renewable share of the compute load, Scope 2 CO2
and PNG plots, from gateway telemetry (JSON Lines, e.g. `edgegw link collect --out`) or
from a dispatch evaluation (`edgegw dispatch eval --json > RUN.json`).

Telemetry is accounted with the firmware's own edgefw.energy.Energy (the same integer flow
split the gateway runs), stepped over the time between records, day by day (UTC, or
--utc-offset hours). Scope 2 is location-based: grid import x the grid factor (default the
China national average 2023, 0.5306 t/MWh; --region or --grid-factor G/KWH); market-based,
hourly CFE, cost and the auditor's summary (--certificates, --price): report_scope2.py,
report_doc.py."""
import csv
import json
import math
import os

import click

from edgegw.cli import UserError, open_out, out_path, read_json, read_text

FLOWS = ("pv_load", "pv_bat", "pv_grid", "bat_load", "bat_grid", "grid_load", "grid_bat",
         "curtail", "grid_imp", "grid_exp", "it", "aux", "pv", "bat_green")
GAP_S = 600   # a hole longer than this in the telemetry is not integrated across


def _energy_params(region, grid_factor):
    from edgefw import energy
    try:
        dg = energy.grid_factor(region, grid_factor)
    except ValueError as e:
        raise UserError("--region: %s" % str(e).split(": ", 1)[-1])
    return {"grid_factor_dg_kwh": dg}, dg


def read_telemetry(path):
    """Telemetry records sorted by time; collector lines of other topics are skipped."""
    recs = []
    for n, line in enumerate(read_text(path, "--telemetry").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            raise UserError("--telemetry %s line %d: not JSON" % (path, n))
        if isinstance(d, dict) and "payload" in d and isinstance(d["payload"], dict):
            d = d["payload"]
        if not isinstance(d, dict) or d.get("_topic", "telemetry") != "telemetry":
            continue
        if not isinstance(d.get("ts"), (int, float)) or not math.isfinite(d["ts"]) or \
                abs(d["ts"]) > 1e11:
            raise UserError("--telemetry %s line %d: no ts (site time, s)" % (path, n))
        recs.append(d)
    if len(recs) < 2:
        raise UserError("--telemetry %s: %d telemetry records, need at least 2"
                        % (path, len(recs)))
    recs.sort(key=lambda d: d["ts"])
    return recs


def _i(d, k):
    v = d.get(k)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def daily_from_telemetry(recs, params, utc_offset_h=0):
    """{day: {flow_wh..., co2_kg, renewable_pct, pv_used_pct, hours}} plus series."""
    from edgefw import energy
    days = {}
    cur = None
    e = None
    off = int(utc_offset_h * 3600)
    for a, b in zip(recs, recs[1:]):
        dt = b["ts"] - a["ts"]
        if dt <= 0 or dt > GAP_S:
            continue
        day = _day(a["ts"] + off)
        if day != cur:
            if e is not None:
                days[cur] = _summary(e, hours)
            cur, e, hours = day, energy.Energy(params), 0.0
        pv = _i(a, "pv_w")
        e.step(int(dt * 1000), pv + _i(a, "curtail_w"), pv, _i(a, "it_w"), _i(a, "aux_w"),
               _i(a, "bat_w"), _i(a, "grid_w"))
        hours += dt / 3600.0
    if e is not None:
        days[cur] = _summary(e, hours)
    return days


def _day(ts):
    import time
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _summary(e, hours):
    from edgefw import energy
    c = e.counters()
    d = {k + "_wh": c[k + "_wh"] for k in FLOWS}
    # from the 0.1 g counter, not the firmware's whole-kg floor: 0.86 kWh is 0.46 kg, not 0
    d["co2_kg"] = round(e.get(energy.CO2) / 10000.0, 3)
    d["renewable_pct"] = round(c["renewable_cpct"] / 100.0, 2)
    d["pv_used_pct"] = round(e.pv_used_cpct() / 100.0, 2)
    d["hours"] = round(hours, 3)
    return d


def totals(days):
    t = {}
    for d in days.values():
        for k, v in d.items():
            if k.endswith("_wh") or k in ("co2_kg", "hours"):
                t[k] = round(t.get(k, 0) + v, 3)
    it = t.get("it_wh", 0)
    # renewable share of the whole period, weighted by each day's compute energy
    green = sum(d["renewable_pct"] * d["it_wh"] for d in days.values())
    t["renewable_pct"] = round(green / it, 2) if it else 0.0
    pv = t.get("pv_wh", 0)
    t["pv_used_pct"] = round(100.0 * (pv - t.get("pv_grid_wh", 0)) / pv, 2) if pv else 0.0
    return t


def plot_telemetry(recs, days, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    names = sorted(days)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 3), 4.5))
    parts = (("pv_load_wh", "PV -> load", "#f2b701"), ("bat_load_wh", "battery -> load",
                                                       "#3c9d5d"),
             ("grid_load_wh", "grid -> load", "#7f7f7f"))
    bottom = [0.0] * len(names)
    for key, label, col in parts:
        vals = [days[n][key] / 1000.0 for n in names]
        ax.bar(names, vals, bottom=bottom, label=label, color=col)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.plot(names, [days[n]["pv_bat_wh"] / 1000.0 for n in names], "o-", color="#1f77b4",
            label="PV -> battery")
    ax.set_ylabel("kWh per day")
    ax.set_title("Daily energy flows (load supply)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = os.path.join(out, "daily_energy.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p)

    t0 = recs[0]["ts"]
    h = [(r["ts"] - t0) / 3600.0 for r in recs]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    for k, col in (("pv_w", "#f2b701"), ("it_w", "#d62728"), ("aux_w", "#9467bd"),
                   ("bat_w", "#3c9d5d"), ("grid_w", "#7f7f7f")):
        a1.plot(h, [_i(r, k) / 1000.0 for r in recs], label=k[:-2], color=col, lw=1)
    a1.set_ylabel("kW")
    a1.legend(loc="upper right", fontsize=8, ncol=5)
    a1.set_title("Site powers (bat > 0 = discharging, grid > 0 = import)")
    a2.plot(h, [_i(r, "soc_cpct") / 100.0 for r in recs], color="#1f77b4")
    a2.set_ylabel("SOC %")
    a2.set_xlabel("hours from start")
    fig.tight_layout()
    p = os.path.join(out, "power.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p)
    return files


# ---- dispatch evaluation runs ------------------------------------------------------------------

def eval_policies(doc):
    """{policy: {metric: number}} from a `dispatch eval --json` document (policies at the
    top level, or under "runs"/"policies"/"results")."""
    if not isinstance(doc, dict):
        raise UserError("--eval: the file is not a JSON object")
    for key in ("runs", "policies", "results"):
        if isinstance(doc.get(key), dict):
            doc = doc[key]
            break
    from edgegw.cmd_dispatch import ROWS
    known = dict(ROWS)
    out = {}
    for name, m in doc.items():
        if isinstance(m, dict):
            nums = {k: v for k, v in m.items() if k in known and isinstance(v, (int, float))
                    and not isinstance(v, bool) and math.isfinite(v)}
            if nums:
                out[name] = nums
    if not out:
        raise UserError("--eval: not a `edgegw dispatch eval --json` result (no policy with "
                        "metrics such as peak_import_w, import_kwh)")
    return out


def plot_eval(pol, out):
    """One panel per metric (its name and unit as the title), one coloured bar per policy
    with a key."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from edgegw.cmd_dispatch import NAMES, ROWS
    have = set(k for v in pol.values() for k in v)
    first = ("peak_import_w", "import_kwh", "pv_used_pct", "renewable_share_pct", "co2_kg",
             "export_kwh")
    keys = ([k for k in first if k in have] + [k for k, _ in ROWS if k in have
                                                and k not in first])[:6]
    label = dict(ROWS)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.8))
    if len(keys) == 1:
        axes = [axes]
    names = list(pol)
    colors = ["#7f7f7f", "#3c9d5d", "#1f77b4", "#f2b701", "#9467bd", "#d62728"]
    for ax, k in zip(axes, keys):
        for i, n in enumerate(names):
            ax.bar(i, pol[n].get(k, 0), color=colors[i % len(colors)],
                   label=NAMES.get(n, n))
        ax.set_title(label[k], fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8)
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=len(names), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    p = os.path.join(out, "eval.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return [p]


@click.command()
@click.option("--telemetry", type=click.Path(dir_okay=False), help="Telemetry JSON Lines.")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False),
              help="A `edgegw dispatch eval --json` result.")
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Directory for report.json, daily.csv, hourly.csv, PNG plots and the "
                   "one-page summary.html / summary.pdf.")
@click.option("--region", default="national", show_default=True,
              help="Grid region for the Scope 2 factor (national, north, east, south, ...).")
@click.option("--grid-factor", type=click.IntRange(0, 2000), metavar="G/KWH",
              help="Grid emission factor in g CO2/kWh (overrides --region).")
@click.option("--utc-offset", type=click.FloatRange(-14, 14), default=0.0, show_default=True,
              help="Hours added to UTC to cut days (8 for China).")
@click.option("--certificates", type=click.Path(dir_okay=False),
              help="Green-electricity certificates / green power purchases of the period "
                   "(JSON ledger, docs/esg.md): market-based Scope 2.")
@click.option("--residual-factor", type=click.FloatRange(0, 2000), metavar="G/KWH",
              default=609.6, show_default=True,
              help="Market-based factor for consumption no certificate covers (China 2023 "
                   "excl. market-traded green power).")
@click.option("--price", type=click.FloatRange(0, 100), metavar="CNY/KWH",
              help="Flat energy price for cost and savings (no tariff is configured).")
@click.option("--site", "site_name", help="Site name for the summary (default: the "
              "certificate ledger's, else the telemetry file's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def cli(telemetry, eval_file, out, region, grid_factor, utc_offset, certificates,
        residual_factor, price, site_name, as_json):
    """Energy, renewable share and Scope 2 CO2 per day, with plots.

    \b
    edgegw report --telemetry tel.jsonl --out report/ --utc-offset 8
    edgegw report --eval sandstorm.json --out report/ --json
    """
    if (telemetry is None) == (eval_file is None):
        raise UserError("give one of --telemetry F.jsonl or --eval RUN.json")
    if out:
        out_path(out, "--out", folder=True)
    if eval_file:
        doc = read_json(eval_file, "--eval")
        rep = {"source": eval_file, "policies": eval_policies(doc)}
        if out:
            rep["plots"] = plot_eval(rep["policies"], out)
    else:
        from edgegw import report_scope2 as s2
        params, dg = _energy_params(region, grid_factor)
        certs = s2.read_certificates(certificates) if certificates else None
        recs = read_telemetry(telemetry)
        days = daily_from_telemetry(recs, params, utc_offset)
        if not days:
            raise UserError("--telemetry %s: no two records within %d s of each other: "
                            "nothing to integrate (longer holes are skipped)"
                            % (telemetry, GAP_S))
        rep = {"source": telemetry, "records": len(recs), "grid_factor_g_kwh": dg / 10.0,
               "days": days, "total": totals(days)}
        hours, peak = s2.hourly_from_telemetry(recs, params)
        rep["site"] = site_name or (certs or {}).get("site") or \
            os.path.splitext(os.path.basename(telemetry))[0]
        rep["region"] = region if grid_factor is None else "custom"
        rep["scope2"] = s2.scope2(hours, rep["total"], dg / 10.0, residual_factor, certs,
                                  recs[0]["ts"], recs[-1]["ts"], utc_offset, price, peak,
                                  s2.gateway_hours(recs))
        rep["hours"] = [dict(d, t0=t) for t, d in hours]
        if out:
            with open_out(os.path.join(out, "daily.csv"), "--out") as f:
                cols = ["day"] + sorted({k for d in days.values() for k in d})
                w = csv.writer(f)
                w.writerow(cols)
                for n in sorted(days):
                    w.writerow([n] + [days[n].get(c) for c in cols[1:]])
            rep["plots"] = plot_telemetry(recs, days, out)
            from edgegw import report_doc
            rep["plots"] += report_doc.write(rep, out, utc_offset)
    if out:
        with open_out(os.path.join(out, "report.json"), "--out") as f:
            json.dump(rep, f, indent=2)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    if eval_file:
        from edgegw.cmd_dispatch import NAMES, ROWS
        pol = rep["policies"]
        names = list(pol)
        click.echo("%-34s" % "" + "".join("%17s" % NAMES.get(n, n)[:16] for n in names))
        for k, label in ROWS:
            if any(k in pol[n] for n in names):
                click.echo("%-34s" % label + "".join(
                    "%17s" % ("-" if pol[n].get(k) is None else pol[n][k]) for n in names))
    else:
        # the period's figures first; the daily table and its factor line stay last
        from edgegw import report_doc
        for line in report_doc.text(rep) + [""]:
            click.echo(line)
        click.echo("%-11s %9s %9s %9s %9s %9s %7s %7s %8s" % (
            "day", "IT kWh", "PV kWh", "PV>load", "bat>load", "grid imp", "renew%", "PVuse%",
            "CO2 kg"))
        for n in sorted(rep["days"]) + ["total"]:
            d = rep["days"].get(n) or rep["total"]
            click.echo("%-11s %9.1f %9.1f %9.1f %9.1f %9.1f %7.1f %7.1f %8.2f" % (
                n, d["it_wh"] / 1e3, d["pv_wh"] / 1e3, d["pv_load_wh"] / 1e3,
                d["bat_load_wh"] / 1e3, d["grid_imp_wh"] / 1e3, d["renewable_pct"],
                d["pv_used_pct"], d["co2_kg"]))
        click.echo("Scope 2 (location-based) at %.1f g CO2/kWh" % rep["grid_factor_g_kwh"])
    if out:
        click.echo("wrote %s" % ", ".join([os.path.join(out, "report.json")]
                                         + rep.get("plots", [])), err=True)
