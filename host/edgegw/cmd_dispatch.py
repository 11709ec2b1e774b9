"""`edgegw dispatch`: evaluate the fallback dispatch on a scenario against no battery, the
cloud schedule and the LP optimum; regenerate the golden vectors of the dual tests."""
import json
import os

import click

from edgegw.cli import UserError, out_path, read_json, read_text

ROWS = (
    ("peak_import_w", "peak import W"),
    ("import_kwh", "grid import kWh"),
    ("export_kwh", "export kWh"),
    ("export_violations", "export violations (min)"),
    ("cap_violations", "import above cap (min)"),
    ("cap_excess_kwh", "import above cap kWh"),
    ("soc_violations", "SOC violations (min)"),
    ("limit_violations", "power limit violations (min)"),
    ("pv_used_pct", "PV used on site %"),
    ("renewable_share_pct", "renewable share of IT load %"),
    ("co2_kg", "Scope 2 kg CO2"),
    ("ens_wh", "energy not served Wh"),
    ("throughput_kwh", "battery throughput kWh"),
    ("curtail_kwh", "PV curtailed kWh"),
    ("soc_end_pct", "SOC at the end %"),
    ("job_import_wh", "grid import during the job Wh"),
    ("job_import_above_band_wh", "job import beyond the aim band Wh"),
    ("peak_reduction_share_pct", "share of optimum peak reduction %"),
    ("pv_use_improvement_share_pct", "share of optimum PV-use gain %"),
)
# with a tariff (site.tariff or --tariff): cost in CNY (evalbench.cost_metrics)
COST_ROWS = (
    ("energy_cny", "energy cost CNY"),
    ("export_cny", "export income CNY"),
    ("demand_kw", "billed demand (15-min mean) kW"),
    ("demand_cny", "demand charge CNY (days/30)"),
    ("cycle_cny", "battery wear CNY"),
    ("total_cny", "total cost CNY"),
    ("total_adj_cny", "total, stored energy change valued"),
    ("cost_saving_share_pct", "share of optimum cost saving %"),
)
NAMES = {"a": "a no battery", "b": "b fallback", "c": "c schedule+lost",
         "r": "r ref perfect-fc", "d": "d LP optimum"}
FORECASTS = {"tracker": "the tracker's forecast (queue jobs + its base estimate)",
             "none": "no forecast"}


@click.group()
def cli():
    """Fallback dispatch: evaluation bench and golden vectors."""


@cli.command("eval")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--site", "site", type=click.Path(dir_okay=False),
              help="site JSON (default: the scenario's name with .json)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@click.option("--plot", type=click.Path(dir_okay=False), help="write a PNG of the runs")
@click.option("--no-forecast", is_flag=True, help="give the fallback no compute forecast")
@click.option("--queue", "queue", type=click.Path(dir_okay=False),
              help="what the job queue knew (.json/.csv; default: SCENARIO.queue.json "
                   "when it exists)")
@click.option("--lead-in", "lead_in", type=click.Path(dir_okay=False),
              help="days before the scenario (same columns) that b and c learn their "
                   "profiles from, as the gateway would have (default: SCENARIO.lead.csv "
                   "when it exists; scenarios/family.py --lead writes them)")
@click.option("--no-reference", is_flag=True,
              help="skip r, the rolling perfect-forecast LP (faster)")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="override a site field (VALUE as JSON: 300, true), repeatable")
@click.option("--tariff", "tariff_file", type=click.Path(dir_okay=False),
              help="a site.tariff JSON (e.g. scenarios/tariffs/guangdong_1_10kv.json): "
                   "cost for every policy, the LP minimises it")
@click.option("--start-date", "start_date", metavar="YYYY-MM-DD",
              help="local date of the scenario's t_s = 0 (the tariff's month; default the "
                   "site's start_date, else 2025-01-01)")
def eval_cmd(scenario, site, as_json, plot, no_forecast, queue, lead_in, no_reference, sets,
             tariff_file, start_date):
    """Run SCENARIO.csv (t_s,pv_w,it_load_w,aux_load_w[,grid_ok]) under five policies: a no
    battery, b the firmware fallback dispatch with what the gateway would know, c the cloud
    schedule then link loss, r reference: perfect forecast (rolling 24 h LP on the realised
    future), d the LP optimum."""
    from edgegw import evalbench
    if not os.path.isfile(scenario):
        raise UserError("SCENARIO: %s not found" % scenario)
    if site is not None and not os.path.isfile(site):
        raise UserError("--site: %s not found" % site)
    if queue is not None and not os.path.isfile(queue):
        raise UserError("--queue: %s not found" % queue)
    if lead_in is None and os.path.isfile(os.path.splitext(scenario)[0] + ".lead.csv"):
        lead_in = os.path.splitext(scenario)[0] + ".lead.csv"
    if lead_in is not None:
        read_text(lead_in, "--lead-in")
    if plot and not plot.lower().endswith(".png"):
        raise UserError("--plot: %s must end in .png" % plot)
    if plot:
        out_path(plot, "--plot")
    # unreadable or non-UTF-8 input is named here, before the evaluation opens the files
    read_text(scenario, "SCENARIO")
    default_site = os.path.splitext(scenario)[0] + ".json"
    if site is not None or os.path.isfile(default_site):
        read_json(site or default_site, "--site")
    over = {}
    for s in sets:
        k, eq, v = s.partition("=")
        if not eq or not k.strip():
            raise UserError("--set: %r is not FIELD=VALUE" % s)
        try:
            over[k.strip()] = json.loads(v)
        except ValueError:
            raise UserError("--set: %s: %r is not a JSON value (a number, true/false)"
                            % (k.strip(), v))
    over.update(_tariff_overrides(tariff_file, start_date))
    try:
        res = evalbench.evaluate(scenario, site, use_forecast=not no_forecast,
                                 keep_runs=bool(plot), overrides=over, queue_path=queue,
                                 reference=not no_reference, lead_path=lead_in)
    except evalbench.ScenarioError as e:
        raise UserError(str(e))
    if over:
        res["overrides"] = over     # a what-if says what it changed
    if plot:
        _plot(res, plot)
        res.pop("_runs")
        res.pop("_params")
    if as_json:
        click.echo(json.dumps(res, indent=2, sort_keys=True))
        return
    pol = res["policies"]
    keys = [k for k in evalbench.POLICIES if k in pol]
    click.echo("scenario %s: %d steps of 60 s, LP peak %d W"
               % (res["scenario"], res["steps"], res["lp_peak_w"]))
    click.echo("b/c get %s (%d queued jobs)%s%s"
               % (FORECASTS[res["forecast"]], res["jobs"],
                  ", grid down %d min" % res["outage_min"] if res["outage_min"] else "",
                  "; r = reference: perfect forecast" if "r" in pol else ""))
    if lead_in:
        click.echo("b/c start with profiles learnt over %s" % lead_in)
    if res.get("tariff"):
        click.echo("tariff: %s" % res["tariff"])
    click.echo("%-34s" % "" + "".join("%17s" % NAMES[k] for k in keys))
    for k, label in ROWS + COST_ROWS:
        if not any(k in pol[p] for p in keys):
            continue
        cells = []
        for p in keys:
            v = pol[p].get(k)
            cells.append("%17s" % ("-" if v is None else v))
        click.echo("%-34s" % label + "".join(cells))


def _tariff_overrides(path, start_date):
    # --tariff FILE / --start-date as site overrides, checked by the firmware's validator
    over = {}
    if path is not None:
        if not os.path.isfile(path):
            raise UserError("--tariff: %s not found" % path)
        from edgefw import tariff
        doc = read_json(path, "--tariff")
        errs = tariff.validate(doc, "tariff", True)[1]
        if errs:
            raise UserError("--tariff: %s: %s" % (path, errs[0]))
        over["tariff"] = doc
    if start_date is not None:
        import datetime
        try:
            datetime.date.fromisoformat(start_date)
        except ValueError:
            raise UserError("--start-date: %r is not a date YYYY-MM-DD" % start_date)
        over["start_date"] = start_date
    return over


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = res["_runs"]
    a = runs["a"]
    h = np.arange(len(a["pv"])) / 60.0
    fig, ax = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ax[0].plot(h, a["pv"] / 1000, label="PV available", color="orange")
    ax[0].plot(h, a["it"] / 1000, label="IT load")
    ax[0].plot(h, (a["it"] + a["aux"]) / 1000, label="IT + aux load")
    ax[0].set_ylabel("kW")
    for k in ("b", "c", "r", "d"):
        if k in runs:
            ax[1].plot(h, runs[k]["bat"] / 1000, label=NAMES[k])
            ax[2].plot(h, runs[k]["grid"] / 1000, label=NAMES[k])
            ax[3].plot(h, runs[k]["soc"] / 100, label=NAMES[k])
    ax[2].plot(h, a["grid"] / 1000, label=NAMES["a"], color="grey", lw=0.8)
    cap = res["_params"]["grid_cap_w"]
    if cap < 10000000:
        ax[2].axhline(cap / 1000, color="red", ls="--", lw=0.8, label="import cap")
    ax[1].set_ylabel("battery kW (+ discharge)")
    ax[2].set_ylabel("grid kW (+ import)")
    ax[3].set_ylabel("SOC %")
    ax[3].set_xlabel("hours")
    for x in ax:
        x.legend(loc="upper right", fontsize=7)
        x.grid(alpha=0.3)
    ax[0].set_title("%s" % res["scenario"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@cli.command("golden")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="golden file (default tests/dual/golden_dispatch.txt in the repo)")
def golden_cmd(out):
    """Regenerate the golden vectors the dual tests replay: the firmware dispatch in a
    closed loop with an integer plant over the bundled scenarios, outputs digested per
    block of 240 steps (tests/dual/golden_dispatch.py does the replay)."""
    from edgegw import evalbench
    path, n = evalbench.write_golden(out)
    click.echo("wrote %s (%d steps)" % (path, n))
