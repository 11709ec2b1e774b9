"""Scope 2 both ways, hourly carbon-free share and cost for `edgegw report`.

The hourly figures come from the firmware's own hourly ledger (edgefw.ledger over
edgefw.energy), stepped over the telemetry as the gateway steps it, so the host and the
gateway agree to the Wh. Method (GHG Protocol Scope 2 Guidance, dual reporting):
location-based = grid import x the grid's average factor (MEE); market-based = grid
import not covered by green-electricity certificates (GEC) or green power purchases x the
residual-style factor (national 2023 excluding market-traded green power, MEE/NBS), the
covered part at 0. Hourly CFE = on-site PV delivered to the IT load in each hour (directly
or through the battery) / the IT load in that hour, summed over hours: hourly matching,
not annual netting; certificates are annual/monthly instruments and do not enter it."""
import datetime
import math

from edgegw.cli import UserError, read_json

KINDS = ("GEC", "green_power")
GAP_S = 600                # as cmd_report: a telemetry hole longer than this is not integrated
SOURCES = {
    "location": "China MEE, grid emission factors 2023 (national 0.5306 t/MWh; regional "
                "grids as published with them)",
    "residual": "China MEE/NBS, national 2023 factor excluding market-traded green power "
                "(0.6096 t/MWh), published with the 2023 factors",
    "method": "GHG Protocol Scope 2 Guidance (2015): location-based and market-based "
              "reported side by side; 24/7 CFE score: share of each hour's consumption met "
              "by carbon-free supply",
}


# ---- the certificate ledger file ---------------------------------------------------------

def _date(v, where):
    if not isinstance(v, str):
        raise UserError("%s: %r is not a date (YYYY-MM-DD)" % (where, v))
    try:
        return datetime.date.fromisoformat(v)
    except ValueError:
        raise UserError("%s: %r is not a date (YYYY-MM-DD)" % (where, v))


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_certificates(path):
    """The certificate ledger: {"site", "period", "entries": [{id, kind, kwh, d0, d1,
    source}]}, or one UserError naming the file and the field."""
    doc = read_json(path, "--certificates")
    pre = "--certificates %s: " % path
    if not isinstance(doc, dict):
        raise UserError(pre + "must be a JSON object with a \"certificates\" list")
    for k in doc:
        if k not in ("site", "period", "certificates", "note"):
            raise UserError(pre + "%s: unknown field (site, period, certificates, note)" % k)
    lst = doc.get("certificates")
    if not isinstance(lst, list):
        raise UserError(pre + "certificates: need a list (may be empty)")
    out = []
    for i, c in enumerate(lst):
        w = "certificates[%d]" % i
        if not isinstance(c, dict):
            raise UserError(pre + w + ": must be an object")
        for k in c:
            if k not in ("id", "kind", "mwh", "kwh", "from", "to", "source", "retired"):
                raise UserError(pre + "%s.%s: unknown field" % (w, k))
        if not isinstance(c.get("id"), str) or not c["id"].strip():
            raise UserError(pre + w + ".id: need the certificate or contract number")
        if c.get("kind") not in KINDS:
            raise UserError(pre + "%s.kind: %r is not one of %s"
                            % (w, c.get("kind"), ", ".join(KINDS)))
        if ("mwh" in c) == ("kwh" in c):
            raise UserError(pre + w + ": give one of mwh (1 GEC = 1 MWh) or kwh")
        unit = "mwh" if "mwh" in c else "kwh"
        if not _num(c[unit]) or c[unit] < 0:
            raise UserError(pre + "%s.%s: %r is not a number >= 0" % (w, unit, c[unit]))
        if c.get("retired", True) is not True:
            raise UserError(pre + w + ".retired: only retired (cancelled) certificates "
                            "may be claimed; drop the entry or retire it")
        d0 = _date(c.get("from"), pre + w + ".from")
        d1 = _date(c.get("to"), pre + w + ".to")
        if d1 < d0:
            raise UserError(pre + "%s.to: %s is before from %s" % (w, d1, d0))
        out.append({"id": c["id"], "kind": c["kind"],
                    "kwh": c[unit] * (1000.0 if unit == "mwh" else 1.0), "d0": d0, "d1": d1,
                    "source": str(c.get("source", ""))})
    return {"site": doc.get("site"), "period": doc.get("period"), "entries": out}


def claimable_kwh(certs, t0, t1, utc_offset_h):
    """kWh of each certificate that falls in the report period [t0, t1) (unix s): an
    entry whose vintage runs past the period counts pro rata by time."""
    off = utc_offset_h * 3600.0
    rows = []
    for c in certs["entries"]:
        a = _day_start(c["d0"]) - off
        b = _day_start(c["d1"]) + 86400 - off
        ov = max(0.0, min(b, t1) - max(a, t0))
        rows.append(dict(c, d0=str(c["d0"]), d1=str(c["d1"]),
                         claimed_kwh=round(c["kwh"] * ov / (b - a), 3)))
    return rows


def _day_start(d):
    return (d - datetime.date(1970, 1, 1)).days * 86400.0


# ---- hourly ledger from telemetry (the firmware's) ----------------------------------------

def _i(d, k):
    v = d.get(k)
    return int(v) if _num(v) else 0


def hourly_from_telemetry(recs, params):
    """[(hour start unix s, {ledger field: Wh, no_bat_imp_wh, peak...})] for every closed
    UTC hour, through edgefw.energy + edgefw.ledger; plus the no-battery import per hour
    (load - available PV, the same records without the battery) for the savings."""
    from edgefw import clock, energy
    e = energy.Energy(params)
    e.ledger.valid_from = -clock.EPOCH        # recorded telemetry: any time after 1970
    names = e.ledger.names
    out = []
    nobat = {}
    peak = {"with_w": 0, "without_w": 0}
    for a, b in zip(recs, recs[1:]):
        dt = b["ts"] - a["ts"]
        if dt <= 0 or dt > GAP_S:
            continue
        pv = _i(a, "pv_w")
        pva = pv + _i(a, "curtail_w")
        load = _i(a, "it_w") + _i(a, "aux_w")
        _roll(e, a["ts"], names, out)
        e.step(int(dt * 1000), pva, pv, _i(a, "it_w"), _i(a, "aux_w"), _i(a, "bat_w"),
               _i(a, "grid_w"))
        _roll(e, b["ts"], names, out)
        h = int(a["ts"]) // 3600
        nb = max(0, load - pva)
        nobat[h] = nobat.get(h, 0.0) + nb * dt / 3600.0
        peak["with_w"] = max(peak["with_w"], _i(a, "grid_w"))
        peak["without_w"] = max(peak["without_w"], nb)
    # the hour in progress at the last record counts too (partial)
    if e.ledger.cur_h is not None:
        vals = e.ledger.current(e)
        if any(vals):
            t = e.ledger.cur_h * 3600 + clock.EPOCH
            out.append((t, dict(zip(names, vals))))
    for t, d in out:
        d["no_bat_imp_wh"] = round(nobat.get(t // 3600, 0.0), 1)
    return out, peak


def _roll(e, ts, names, out):
    # the gateway's roll at this record's time; a closed hour is read off the ring at once
    from edgefw import clock
    prev = e.ledger.cur_h
    if e.ledger.roll(int(ts) - clock.EPOCH, e) and prev is not None:
        h = e.ledger.hour(0)
        out.append((h[0] * 3600 + clock.EPOCH, dict(zip(names, h[1]))))


def cfe_pct(d):
    return 100.0 * d["it_green_wh"] / d["it_wh"] if d["it_wh"] else None


# ---- the figures -------------------------------------------------------------------------

def scope2(hours, totals, loc_g_kwh, residual_g_kwh, certs, t0, t1, utc_offset_h,
           price, peak, gw=None):
    """Dual Scope 2, hourly CFE, reconciliation and cost, as one JSON-able dict."""
    imp_kwh = totals.get("grid_imp_wh", 0) / 1000.0
    rows = claimable_kwh(certs, t0, t1, utc_offset_h) if certs else []
    claimed = sum(r["claimed_kwh"] for r in rows)
    covered = min(claimed, imp_kwh)
    it = sum(d["it_wh"] for _, d in hours)
    green = sum(d["it_green_wh"] for _, d in hours)
    load = totals.get("it_wh", 0) + totals.get("aux_wh", 0)
    pv = totals.get("pv_wh", 0)
    s = {
        "period": {"from_ts": t0, "to_ts": t1},
        "grid_import_kwh": round(imp_kwh, 3),
        "location_based": {"factor_g_kwh": loc_g_kwh,
                           "co2_kg": round(imp_kwh * loc_g_kwh / 1000.0, 3)},
        "market_based": {"factor_g_kwh": residual_g_kwh, "certificates": rows,
                         "claimed_kwh": round(claimed, 3), "covered_kwh": round(covered, 3),
                         "unused_kwh": round(claimed - covered, 3),
                         "uncovered_kwh": round(imp_kwh - covered, 3),
                         "co2_kg": round((imp_kwh - covered) * residual_g_kwh / 1000.0, 3)},
        "cfe": {"hourly_pct": round(100.0 * green / it, 2) if it else None,
                "hours": len(hours), "it_kwh": round(it / 1000.0, 3),
                "it_green_kwh": round(green / 1000.0, 3),
                # what annual netting would claim: all PV against all load
                "netted_pct": round(100.0 * min(pv, load) / load, 2) if load else None},
        "reconciliation": dict(_reconcile(hours, totals),
                               gateway_ledger=gateway_check(hours, gw or {})),
        "cost": _cost(hours, price, peak),
    }
    return s


def _reconcile(hours, totals):
    d = {}
    for k in ("pv_wh", "grid_imp_wh", "it_wh"):
        d[k] = sum(h[k] for _, h in hours) - totals.get(k, 0)
    return {"hourly_minus_daily_wh": d, "max_abs_wh": max(abs(v) for v in d.values())}


def gateway_hours(recs):
    """{hour start unix s: fields} of the hours the gateway itself closed (telemetry g.hour,
    edgefw.ledger at its control period), for the cross-check; a later copy wins."""
    out = {}
    for r in recs:
        h = r["g"].get("hour") if isinstance(r.get("g"), dict) else None
        if isinstance(h, dict) and _num(h.get("t0")):
            out[int(h["t0"])] = h
    return out


def gateway_check(hours, gw):
    """The host's hours (integrated between telemetry records) against the gateway's own
    (integrated every control step): how many hours both have, the largest |difference|."""
    both = [(d, gw[t]) for t, d in hours if t in gw]
    if not both:
        return None
    worst = {}
    for k in ("pv_wh", "grid_imp_wh", "it_wh", "it_green_wh"):
        worst[k] = max(abs(_i(g, k) - d[k]) for d, g in both)
    return {"hours": len(both), "max_abs_diff_wh": worst}


def _cost(hours, price, peak):
    imp = sum(h["grid_imp_wh"] for _, h in hours) / 1000.0
    nob = sum(h["no_bat_imp_wh"] for _, h in hours) / 1000.0
    c = {"tariff": None, "price_cny_kwh": price, "import_kwh": round(imp, 3),
         "no_battery_import_kwh": round(nob, 3), "peak_import_kw": round(peak["with_w"] / 1e3, 2),
         "no_battery_peak_kw": round(peak["without_w"] / 1e3, 2)}
    if price is None:
        c["note"] = "no tariff configured: give --price CNY/kWh for a flat-price cost"
        return c
    c["note"] = "no tariff configured: flat %.4f CNY/kWh on grid import" % price
    c["energy_cny"] = round(imp * price, 2)
    c["no_battery_cny"] = round(nob * price, 2)
    c["saving_cny"] = round((nob - imp) * price, 2)
    return c
