"""The site owner's and auditor's view of `edgegw report`: text lines, hourly.csv, the
hourly CFE and Scope 2 plots (PNG, matplotlib Agg) and a one-page summary (HTML with the
plots inlined, and the same page as PDF through matplotlib's PdfPages)."""
import base64
import csv
import datetime
import html
import os

from edgegw.cli import open_out
from edgegw.report_scope2 import SOURCES, cfe_pct

GREEN = "#3c9d5d"
PV = "#f2b701"
GRID = "#7f7f7f"


def _period(rep, off_h=0.0):
    p = rep["scope2"]["period"]
    f = "%Y-%m-%d %H:%M"
    a = datetime.datetime.utcfromtimestamp(p["from_ts"] + off_h * 3600).strftime(f)
    b = datetime.datetime.utcfromtimestamp(p["to_ts"] + off_h * 3600).strftime(f)
    return "%s .. %s (UTC%+g)" % (a, b, off_h)


def text(rep):
    s = rep["scope2"]
    lb, mb, cfe, c = s["location_based"], s["market_based"], s["cfe"], s["cost"]
    out = ["Scope 2, GHG Protocol dual reporting, grid import %.1f kWh:" % s["grid_import_kwh"],
           "  location-based  %6.1f g/kWh x %9.1f kWh                   = %9.2f kg CO2"
           % (lb["factor_g_kwh"], s["grid_import_kwh"], lb["co2_kg"]),
           "  market-based    %6.1f g/kWh x %9.1f kWh not covered       = %9.2f kg CO2"
           % (mb["factor_g_kwh"], mb["uncovered_kwh"], mb["co2_kg"]),
           "                  certificates %.1f kWh in the period, %.1f kWh used, %.1f kWh "
           "left over" % (mb["claimed_kwh"], mb["covered_kwh"], mb["unused_kwh"])]
    if cfe["hourly_pct"] is None:
        out.append("Hourly CFE: no IT load in the period")
    else:
        out.append("Hourly CFE (24/7, on-site PV to the IT load hour by hour): %.1f %% over "
                   "%d h" % (cfe["hourly_pct"], cfe["hours"]))
        out.append("  (netting all the PV against all the load would claim %.1f %%)"
                   % (cfe["netted_pct"] or 0.0))
    out.append("Reconciliation: hourly ledger - daily counters: max %d Wh"
               % s["reconciliation"]["max_abs_wh"])
    g = s["reconciliation"].get("gateway_ledger")
    if g:
        out.append("Gateway's own hourly ledger (telemetry g): %d h, max |difference| %s"
                   % (g["hours"], ", ".join("%s %d Wh" % (k[:-3], v)
                                            for k, v in g["max_abs_diff_wh"].items())))
    if c.get("energy_cny") is None:
        out.append("Cost: %s" % c["note"])
    else:
        out.append("Cost at a flat %.4f CNY/kWh (no tariff configured): %.2f CNY"
                   % (c["price_cny_kwh"], c["energy_cny"]))
        out.append("  without the battery %.2f CNY: saving %.2f CNY"
                   % (c["no_battery_cny"], c["saving_cny"]))
    out.append("Peak import %.2f kW (without the battery %.2f kW)"
               % (c["peak_import_kw"], c["no_battery_peak_kw"]))
    return out


def write(rep, out, off_h):
    """hourly.csv, hourly_cfe.png, scope2.png, summary.html, summary.pdf in `out`."""
    files = [_csv(rep, out)]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = [_fig_cfe(plt, rep, off_h), _fig_scope2(plt, rep)]
    for fig, name in zip(figs, ("hourly_cfe.png", "scope2.png")):
        p = os.path.join(out, name)
        fig.savefig(p, dpi=100)
        files.append(p)
    files.append(_html(rep, out, off_h, files[1:]))
    files.append(_pdf(plt, rep, out, off_h, figs))
    for fig in figs:
        plt.close(fig)
    return files


def _csv(rep, out):
    p = os.path.join(out, "hourly.csv")
    cols = ["hour_start_utc", "pv_wh", "pv_load_wh", "pv_bat_wh", "bat_green_wh",
            "bat_load_wh", "grid_imp_wh", "grid_load_wh", "it_wh", "it_green_wh", "cfe_pct",
            "no_bat_imp_wh"]
    with open_out(p, "--out") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for h in rep["hours"]:
            c = cfe_pct(h)
            w.writerow([_utc(h["t0"])] + [h[k] for k in cols[1:10]]
                       + ["" if c is None else round(c, 2), h["no_bat_imp_wh"]])
    return p


def _utc(t):
    return datetime.datetime.utcfromtimestamp(t).strftime("%Y-%m-%dT%H:%MZ")


def _fig_cfe(plt, rep, off_h):
    import matplotlib.dates as mdates
    hrs = rep["hours"]
    x = [datetime.datetime.utcfromtimestamp(h["t0"] + off_h * 3600) for h in hrs]
    direct, via, grid = [], [], []
    for h in hrs:
        g = h["pv_load_wh"] + h["bat_green_wh"]
        share = h["pv_load_wh"] / g if g else 0.0
        direct.append(h["it_green_wh"] * share / 1000.0)
        via.append(h["it_green_wh"] * (1 - share) / 1000.0)
        grid.append((h["it_wh"] - h["it_green_wh"]) / 1000.0)
    w = 1 / 24.0 * 0.9
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
    a1.bar(x, direct, w, align="edge", color=PV, label="PV, direct")
    a1.bar(x, via, w, align="edge", bottom=direct, color=GREEN, label="PV, via the battery")
    a1.bar(x, grid, w, align="edge", bottom=[a + b for a, b in zip(direct, via)], color=GRID,
           label="grid")
    a1.set_ylabel("IT load supply, kWh per hour")
    a1.set_title("%s: hourly supply of the IT load and carbon-free share" % rep["site"])
    top = max([a + b + c for a, b, c in zip(direct, via, grid)] + [0.001])
    a1.set_ylim(0, top * 1.25)         # room for the legend above the bars
    a1.legend(loc="upper left", fontsize=9, ncol=3)
    a1.grid(axis="y", alpha=0.3)
    cf = [cfe_pct(h) for h in hrs]
    a2.bar(x, [0 if c is None else c for c in cf], w, align="edge", color=GREEN,
           label="hourly CFE")
    score = rep["scope2"]["cfe"]["hourly_pct"]
    if score is not None:
        a2.axhline(score, color="#1f77b4", ls="--", lw=1.5,
                   label="period CFE score %.1f %%" % score)
    a2.set_ylim(0, 130)
    a2.set_yticks([0, 20, 40, 60, 80, 100])
    a2.set_ylabel("carbon-free, % of the hour")
    a2.set_xlabel("local time (UTC%+g)" % off_h)
    a2.legend(loc="upper left", fontsize=9, ncol=2)
    a2.grid(axis="y", alpha=0.3)
    a2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _fig_scope2(plt, rep):
    s = rep["scope2"]
    lb, mb = s["location_based"], s["market_based"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = ["location-based", "market-based"]
    vals = [lb["co2_kg"], mb["co2_kg"]]
    bars = ax.bar(names, vals, color=[GRID, "#1f77b4"], width=0.55)
    for b, v, note in zip(bars, vals, (
            "%.1f g/kWh x %.1f kWh" % (lb["factor_g_kwh"], s["grid_import_kwh"]),
            "%.1f g/kWh x %.1f kWh not covered" % (mb["factor_g_kwh"], mb["uncovered_kwh"]))):
        ax.annotate("%.2f kg\n%s" % (v, note), (b.get_x() + b.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 3),
                    textcoords="offset points")
    ax.set_ylim(0, max(vals + [1e-3]) * 1.35)
    ax.set_ylabel("Scope 2 emissions, kg CO2")
    ax.set_title("Scope 2, dual reporting: %s" % rep["site"])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _rows(pairs):
    return "".join("<tr><th>%s</th><td>%s</td></tr>" % (html.escape(a), html.escape(str(b)))
                   for a, b in pairs)


def _summary_pairs(rep, off_h):
    s, t = rep["scope2"], rep["total"]
    lb, mb, cfe, c = s["location_based"], s["market_based"], s["cfe"], s["cost"]
    return [
        ("IT (compute) load", "%.1f kWh" % (t.get("it_wh", 0) / 1e3)),
        ("PV produced / used on site", "%.1f kWh / %.1f %%"
         % (t.get("pv_wh", 0) / 1e3, t.get("pv_used_pct", 0))),
        ("Grid import", "%.1f kWh" % s["grid_import_kwh"]),
        ("Scope 2 location-based", "%.2f kg CO2 (%.1f g/kWh, region %s)"
         % (lb["co2_kg"], lb["factor_g_kwh"], rep.get("region"))),
        ("Scope 2 market-based", "%.2f kg CO2 (%.1f kWh covered by certificates, %.1f kWh "
         "x %.1f g/kWh)" % (mb["co2_kg"], mb["covered_kwh"], mb["uncovered_kwh"],
                            mb["factor_g_kwh"])),
        ("Hourly CFE score (24/7)", "-" if cfe["hourly_pct"] is None else
         "%.1f %% over %d h (netted over the period: %.1f %%)"
         % (cfe["hourly_pct"], cfe["hours"], cfe["netted_pct"] or 0)),
        ("Cost", c["note"] if c.get("energy_cny") is None else
         "%.2f CNY, without the battery %.2f CNY, saving %.2f CNY (%s)"
         % (c["energy_cny"], c["no_battery_cny"], c["saving_cny"], c["note"])),
        ("Peak import", "%.2f kW (without the battery %.2f kW)"
         % (c["peak_import_kw"], c["no_battery_peak_kw"])),
        ("Reconciliation", "hourly ledger vs daily counters: max %d Wh"
         % s["reconciliation"]["max_abs_wh"]),
    ]


NOTES = [
    "Dual reporting per the GHG Protocol Scope 2 Guidance: location-based = grid import x "
    "the grid's average emission factor; market-based = grid import not covered by retired "
    "green-electricity certificates (GEC) or green power purchases x a residual-mix style "
    "factor, the covered part at 0 t/MWh.",
    "Energy figures are the gateway's own integer counters (edgefw.energy, Wh, carried "
    "remainders) run over the telemetry; PV stored in the battery counts as carbon-free when "
    "it is later delivered, in the share of PV in the battery's content.",
    "Hourly CFE: each hour's carbon-free supply to the IT load (on-site PV, directly or via "
    "the battery) / that hour's IT load, summed over hours (hourly matching, not annual "
    "netting). Certificates are annual or monthly instruments: they enter the market-based "
    "figure, not the hourly score. Grid supply counts as not carbon-free.",
    "A certificate whose vintage runs past the report period counts pro rata by time; "
    "certificates beyond the period's grid import are reported as left over, never below 0.",
]


def _html(rep, out, off_h, pngs):
    s = rep["scope2"]
    imgs = ""
    for p in pngs:
        with open(p, "rb") as f:
            b64 = base64.b64encode(f.read()).decode()
        imgs += '<img alt="%s" src="data:image/png;base64,%s">' % (
            html.escape(os.path.basename(p)), b64)
    certs = "".join(
        "<tr><td>%s</td><td>%s</td><td>%s .. %s</td><td>%.1f</td><td>%.1f</td><td>%s</td></tr>"
        % tuple(html.escape(str(v)) if isinstance(v, str) else v for v in (
            c["id"], c["kind"], c["d0"], c["d1"], c["kwh"], c["claimed_kwh"], c["source"]))
        for c in s["market_based"]["certificates"]) or \
        '<tr><td colspan="6">none given (market-based = all import at the residual factor)' \
        '</td></tr>'
    page = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Scope 2 and CFE: {site}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto;font-size:11pt}}
table{{border-collapse:collapse;margin:.5em 0}}th,td{{border:1px solid #bbb;padding:2px 6px;
text-align:left}}img{{max-width:100%}}h1{{font-size:16pt}}h2{{font-size:12pt;margin-top:1em}}
small{{color:#555}}</style></head><body>
<h1>Scope 2 emissions and carbon-free energy: {site}</h1>
<p>Period: {period}. Telemetry: {src} ({recs} records).</p>
<h2>Totals</h2><table>{totals}</table>
<h2>Certificates and green power purchases claimed</h2>
<table><tr><th>id</th><th>kind</th><th>vintage</th><th>kWh</th><th>in period, kWh</th>
<th>source</th></tr>{certs}</table>
<h2>Method</h2><ul>{notes}</ul>
<h2>Factor sources</h2><ul>{sources}</ul>
{imgs}
<p><small>edgegw report; hourly figures in hourly.csv, everything in report.json.</small></p>
</body></html>
""".format(site=html.escape(rep["site"]), period=html.escape(_period(rep, off_h)),
           src=html.escape(rep["source"]), recs=rep["records"],
           totals=_rows(_summary_pairs(rep, off_h)), certs=certs,
           notes="".join("<li>%s</li>" % html.escape(n) for n in NOTES),
           sources="".join("<li>%s</li>" % html.escape(v) for v in SOURCES.values()),
           imgs=imgs)
    p = os.path.join(out, "summary.html")
    with open_out(p, "--out") as f:
        f.write(page)
    return p


def _pdf(plt, rep, out, off_h, figs):
    """One A4 page: the summary table and notes as text, then the hourly CFE plot."""
    import textwrap
    from matplotlib.backends.backend_pdf import PdfPages
    p = os.path.join(out, "summary.pdf")
    page = plt.figure(figsize=(8.27, 11.69))
    y = 0.96
    page.text(0.06, y, "Scope 2 emissions and carbon-free energy", fontsize=13, weight="bold")
    y -= 0.024
    page.text(0.06, y, "Site: %s" % rep["site"], fontsize=11, weight="bold")
    y -= 0.022
    page.text(0.06, y, "Period: %s" % _period(rep, off_h), fontsize=9)
    y -= 0.03
    for k, v in _summary_pairs(rep, off_h):
        lines = textwrap.wrap(v, 70)
        page.text(0.06, y, k, fontsize=8.5, weight="bold")
        for ln in lines:
            page.text(0.36, y, ln, fontsize=8.5)
            y -= 0.017
    certs = rep["scope2"]["market_based"]["certificates"]
    page.text(0.06, y, "Certificates", fontsize=8.5, weight="bold")
    for c in certs or [None]:
        ln = "none given: all import at the residual factor" if c is None else \
            "%s (%s, %s .. %s, %.1f kWh; %.1f kWh in the period) %s" % (
                c["id"], c["kind"], c["d0"], c["d1"], c["kwh"], c["claimed_kwh"], c["source"])
        for part in textwrap.wrap(ln, 70):
            page.text(0.36, y, part, fontsize=8.5)
            y -= 0.017
    y -= 0.01
    for n in NOTES + ["Sources: " + "; ".join(SOURCES.values())]:
        for ln in textwrap.wrap(n, 110):
            page.text(0.06, y, ln, fontsize=7.5)
            y -= 0.014
        y -= 0.005
    import io
    buf = io.BytesIO()
    figs[0].savefig(buf, format="png", dpi=110)
    buf.seek(0)
    img = plt.imread(buf)
    ax = page.add_axes([0.04, 0.03, 0.92, max(0.2, y - 0.05)])
    ax.imshow(img)
    ax.axis("off")
    with PdfPages(p) as pdf:
        pdf.savefig(page)
    plt.close(page)
    return p
