"""Dispatch evaluation bench: one 1-minute simulator, five policies, the same metrics.

  a  no battery (PV straight to the load, surplus curtailed where export is forbidden)
  b  the firmware fallback dispatch (firmware/edgefw/dispatch.py itself) from the start,
     fed what the gateway would have: the tracker's compute forecast (host/edgegw/tracker:
     its smoothed measured IT load plus the jobs the scenario's queue shows at that time,
     5 min points, 6 h ahead, sent on change or every 5 min), or nothing (--no-forecast);
     never the realised future; no PV forecast, no cloud schedule
  c  the cloud schedule: the cloud's optimum setpoints until link_lost_s, then the firmware
     with the schedule windows it received (followed until they expire), same forecast as b
  r  reference: perfect forecast. A rolling 24 h LP on the realised future, re-solved every
     hour (first hour in minutes, the rest in 15 min blocks): what planning with a perfect
     forecast gets; the gap b..r is the forecast, r..d the rolling horizon
  d  the perfect-foresight optimum by LP (HiGHS): minimise the energy not served, then the
     peak import, then the grid energy at that peak (export and curtailment variables,
     E[T] >= E[0])

Plant: battery energy in Wh (float), charge efficiency on the way in, discharge on the way
out, power clamped by the PCS/BMS limits and by the energy left; the BMS limits the PCS
sees are the configured charge/discharge W (0 at 100 % / 0 % SOC). The grid meter reading
given to the firmware is the one before its new setpoint applies.
Grid outage (scenario column grid_ok = 0): the grid gives nothing; the PCS forms the island
and the battery carries the IT load alone (aux load is shed), whatever the policy asked,
down to soc_min; PV it cannot store is curtailed; IT load it cannot carry is energy not
served (ENS), counted from the plant for every policy, the LP too.
"""
import csv
import io
import json
import math
import os

import numpy as np

from edgefw import dispatch, energy
from edgegw.cli import read_json, read_text

STEP_S = 60
FC_STEP_S = 300
FC_HORIZON_S = 6 * 3600
FC_REFRESH_S = 900      # the old realised-load forecast's period (forecast_at)
FC_SEND_S = 300         # tracker: resend an unchanged forecast after this (tracker run default)
FC_VALID_S = 3600       # tracker: forecast valid this long (tracker run --valid default)
REASONS = ("idle", "safety", "soc", "bms", "ramp", "export", "cap", "reserve", "shave",
           "self", "hold", "precharge", "schedule", "deadband", "outage", "tou")


class ScenarioError(ValueError):
    """A problem with the scenario or site file (message names the file and field)."""


# ---- loading ----------------------------------------------------------------------

QUEUE_SUFFIX = ".queue.json"   # what the job queue knew, beside the scenario (optional)
QUEUE_LEAD_S = 3600     # a job shows in the queue this long before its start (default)
COLS = ("t_s", "pv_w", "it_load_w", "aux_load_w")


def load_scenario(csv_path, site_path=None, overrides=None, queue_path=None):
    """-> (dict of int numpy arrays t_s, pv_w, it_w, aux_w, grid_ok and the queue's jobs;
    validated site params). overrides: site fields that replace the file's (validated the
    same way). queue_path: what the job queue knew (default: NAME.queue.json beside the
    CSV when it exists; none = the tracker has its base estimate only)."""
    if site_path is None:
        site_path = os.path.splitext(csv_path)[0] + ".json"
    site = read_json(site_path, "site file", ScenarioError)
    if not isinstance(site, dict):
        raise ScenarioError("%s: must be a JSON object" % site_path)
    site.update(overrides or {})
    day0 = _start_day(site.pop("start_date", None), site_path)
    try:
        p = dispatch.validate_params(site)
    except ValueError as e:
        raise ScenarioError("%s: %s" % (site_path, e))
    sc = _read_csv(csv_path)
    sc["day0"] = day0
    if len(sc["t_s"]) and (np.diff(sc["t_s"]) < STEP_S).any():
        sc = _to_minutes(sc)
    if queue_path is None:
        q = os.path.splitext(csv_path)[0] + QUEUE_SUFFIX
        queue_path = q if os.path.isfile(q) else None
    sc["jobs"] = [] if queue_path is None else load_queue(queue_path, int(sc["t_s"][0]))
    sc["name"] = p.get("name") or os.path.splitext(os.path.basename(csv_path))[0]
    return sc, p


def _read_csv(csv_path):
    cols = {k: [] for k in COLS}
    cols["grid_ok"] = []
    try:
        f = open(csv_path, newline="")
    except OSError as e:
        raise ScenarioError("%s: cannot read scenario (%s)" % (csv_path, e.strerror))
    with f:
        r = csv.reader(f)
        head = [h.strip() for h in (next(r, None) or [])]
        if head[:4] != list(COLS):
            raise ScenarioError("%s: header must be t_s,pv_w,it_load_w,aux_load_w[,grid_ok] "
                                "(got %s)" % (csv_path, ",".join(head)))
        # columns after these are ignored, as before grid_ok existed
        names = head[:5] if head[4:5] == ["grid_ok"] else head[:4]
        for ln, row in enumerate(r, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < len(names):
                raise ScenarioError("%s line %d: %d columns needed" % (csv_path, ln, len(names)))
            for k, v in zip(names, row):
                try:
                    x = float(v)
                except ValueError:
                    raise ScenarioError("%s line %d: %s %r is not a number" % (csv_path, ln, k, v))
                if k == "grid_ok":
                    if x not in (0.0, 1.0):
                        raise ScenarioError("%s line %d: grid_ok %r must be 1 (grid up) or 0 "
                                            "(outage)" % (csv_path, ln, v))
                elif not math.isfinite(x) or (k != "t_s" and not 0 <= x <= dispatch.WMAX):
                    raise ScenarioError("%s line %d: %s %r out of range 0..%d W"
                                        % (csv_path, ln, k, v, dispatch.WMAX))
                cols[k].append(int(round(x)))
    t = np.array(cols["t_s"], dtype=np.int64)
    if len(t) < 2:
        raise ScenarioError("%s: needs at least 2 rows" % csv_path)
    dts = np.diff(t)
    if (dts <= 0).any():
        i = int(np.argmax(dts <= 0))
        raise ScenarioError("%s line %d: t_s must increase" % (csv_path, i + 3))
    if (dts > STEP_S).any() or (STEP_S % dts != 0).any():
        raise ScenarioError("%s: steps must be 60 s or a divisor of 60 s" % csv_path)
    ok = cols["grid_ok"] or [1] * len(t)
    return {"t_s": t, "pv_w": np.array(cols["pv_w"]), "it_w": np.array(cols["it_load_w"]),
            "aux_w": np.array(cols["aux_load_w"]), "grid_ok": np.array(ok, dtype=np.int64)}


def _to_minutes(sc):
    # finer scenarios are averaged onto the 1-minute grid of the simulator; a minute with
    # any outage row is an outage minute
    t = sc["t_s"]
    m = (t - t[0]) // STEP_S
    out = {"t_s": np.unique(m) * STEP_S + t[0]}
    for k in ("pv_w", "it_w", "aux_w"):
        s = np.bincount(m, weights=sc[k])
        c = np.bincount(m)
        out[k] = np.round(s[c > 0] / c[c > 0]).astype(np.int64)
    down = np.bincount(m, weights=1 - sc["grid_ok"])
    out["grid_ok"] = (down[np.bincount(m) > 0] == 0).astype(np.int64)
    return out


def load_queue(path, t_first=0):
    """What the scenario's job queue knew: [(known_s, job)], job as the tracker's queue
    module makes it (host/edgegw/tracker/queue.py, its own validation). The file: JSON, a
    list of jobs or {"lead_s": s, "jobs": [...]}, or CSV with a header row; each record a
    tracker queue record (id, start, duration_s, power_w or nodes x node_w) with its start
    in site s, plus known_s: the site time the queue first shows it (default start - lead_s,
    lead_s default QUEUE_LEAD_S)."""
    from edgegw.tracker import queue as tq
    text = read_text(path, "queue file", ScenarioError)
    lead = QUEUE_LEAD_S
    if path.lower().endswith(".csv"):
        recs = [{k.strip(): (v or "").strip() for k, v in r.items() if k}
                for r in csv.DictReader(io.StringIO(text))
                if any((v or "").strip() for v in r.values())]
    else:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ScenarioError("%s: not valid JSON (%s)" % (path, e))
        recs = doc
        if isinstance(doc, dict):
            recs, lead = doc.get("jobs"), doc.get("lead_s", QUEUE_LEAD_S)
        if not isinstance(recs, list):
            raise ScenarioError('%s: need a list of jobs or {"jobs": [...]}' % path)
        if not isinstance(lead, int) or isinstance(lead, bool) or not 0 <= lead <= 604800:
            raise ScenarioError("%s: lead_s: %r not an integer 0..604800" % (path, lead))
    out = []
    for i, r in enumerate(recs):
        w = "jobs[%d]" % i
        try:
            j = tq.make_job(r, t_first, w)
        except tq.QueueError as e:
            raise ScenarioError("%s: %s" % (path, e))
        if j["start"] is None:
            raise ScenarioError("%s: %s.start: a scenario's job needs its start (site s)"
                                % (path, w))
        k = r.get("known_s")
        if k in (None, ""):
            k = j["start"] - lead
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ScenarioError("%s: %s.known_s: %r is not an integer (site s)"
                                % (path, w, r.get("known_s")))
        out.append((min(k, j["start"]), j))
    return out


# ---- plant ------------------------------------------------------------------------

class Plant:
    def __init__(self, p):
        self.p = p
        self.cap_wh = float(p["battery_wh"])
        self.e = self.cap_wh * p["soc_init_cpct"] / 10000.0
        self.cmax = min(p["charge_max_w"], p["pcs_w"])
        self.dmax = min(p["discharge_max_w"], p["pcs_w"])
        self.ec = p["eta_c_milli"] / 1000.0
        self.ed = p["eta_d_milli"] / 1000.0
        self.emin = self.cap_wh * p["soc_min_cpct"] / 10000.0
        self.emax = self.cap_wh * p["soc_max_cpct"] / 10000.0

    def soc_cpct(self):
        return int(round(self.e / self.cap_wh * 10000))

    def limits(self):
        s = self.soc_cpct()
        return (self.cmax if s < 10000 else 0), (self.dmax if s > 0 else 0)

    def apply(self, sp, dt_s):
        h = dt_s / 3600.0
        if sp > 0:
            b = min(sp, self.dmax, self.e * self.ed / h)
            self.e -= b * h / self.ed
        elif sp < 0:
            b = -min(-sp, self.cmax, (self.cap_wh - self.e) / self.ec / h)
            self.e -= b * h * self.ec
        else:
            b = 0.0
        self.e = min(max(self.e, 0.0), self.cap_wh)
        return b

    def island(self, pv, it, dt_s):
        """Grid down: the PCS forms the grid and the battery carries the IT load alone (aux
        shed), within its limits and the SOC window. -> (battery W, curtailed W, ENS W)."""
        h = dt_s / 3600.0
        need = float(it - pv)
        if need > 0:
            b = min(need, self.dmax, max(0.0, (self.e - self.emin) * self.ed / h))
            self.e -= b * h / self.ed
            return b, 0.0, need - b
        c = min(-need, self.cmax, max(0.0, (self.emax - self.e) / self.ec / h))
        self.e += c * h * self.ec
        return -c, -need - c, 0.0


# ---- the forecast the tracker would send --------------------------------------------

class TrackerFeed:
    """What the tracker would publish to the gateway: host/edgegw/tracker's Tracker fed the
    measured IT load each minute (its own base estimate: Holt smoothing with step and ramp
    detection) plus the jobs the scenario's queue shows at that time (known_s reached, not
    yet ended), with their stated power and duration. Sends on a change or every
    FC_SEND_S, valid FC_VALID_S: `edgegw tracker run --step 300 --horizon 72`."""

    def __init__(self, jobs):
        from edgegw.tracker import Tracker
        self.queue = sorted(jobs, key=lambda kj: kj[0])
        self.tr = Tracker(jobs_fn=self._jobs, step_s=FC_STEP_S, steps=FC_HORIZON_S // FC_STEP_S,
                          valid_s=FC_VALID_S, refresh_s=FC_SEND_S)

    def _jobs(self, now):
        return [j for k, j in self.queue if k <= now < j["start"] + j["duration_s"]]

    def tick(self, t, it_w):
        """-> (t0, step_s, load_w, exp) when a message goes out at t, else None."""
        m = self.tr.tick(t, it_w, "scenario")
        if m is None:
            return None
        return m["t0"], m["step_s"], m["load_w"], m["exp"]


def forecast_at(sc, i):
    """5-min means of the REALISED IT load from minute i, 6 h ahead (ints): a perfect
    forecast no gateway has. Kept only to measure what the old evaluation's cheat was worth
    (evaluate(forecast="realised")); never what (b)/(c) get by default."""
    it = sc["it_w"]
    n = FC_HORIZON_S // FC_STEP_S
    k = FC_STEP_S // STEP_S
    out = []
    for j in range(n):
        a = i + j * k
        if a >= len(it):
            break
        seg = it[a:a + k]
        out.append(int(sum(int(x) for x in seg) // len(seg)))
    return out


def _forecaster(sc, mode):
    """-> f(i, t) giving (t0, step_s, load_w, exp) or None, for mode tracker/none/realised."""
    if mode == "none":
        return lambda i, t: None
    if mode == "realised":
        t_first = int(sc["t_s"][0])

        def cheat(i, t):
            if (t - t_first) % FC_REFRESH_S == 0:
                fc = forecast_at(sc, i)
                if fc:
                    return t, FC_STEP_S, fc, t + 2 * FC_REFRESH_S
            return None
        return cheat
    if mode != "tracker":
        raise ValueError("forecast: %r not tracker/none/realised" % (mode,))
    feed = TrackerFeed(sc.get("jobs") or [])
    it = sc["it_w"]
    return lambda i, t: feed.tick(t, int(it[i]))


# ---- policies ---------------------------------------------------------------------

def lead_in_learnt(csv_path, p):
    """What the gateway learnt (learnt.Learnt.state()) over a learning lead-in: a CSV of
    the days before the scored scenario (scenarios/family.py --lead), measured by the
    gateway alone as it would have in the field (its IT, aux and PV; nothing of the
    scored days). The scored run starts from it as from a reboot with learnt.json kept."""
    lc = _read_csv(csv_path)
    d = dispatch.Dispatcher(dict(p, schedule=[]))
    tod = d.plan.profile.tod
    for i in range(len(lc["t_s"])):
        d.learnt.learn(tod(int(lc["t_s"][i])), int(lc["pv_w"][i]), int(lc["it_w"][i]),
                       int(lc["aux_w"][i]))
    return d.learnt.state()


def run_firmware(sc, p, forecast="tracker", cloud_sp=None, lost_s=None, schedule=False,
                 record=None, sent=None, learnt=None):
    """Closed loop with the firmware dispatcher. forecast: "tracker" (what the gateway
    would get), "none", or "realised" (the perfect-forecast cheat, for comparison only).
    cloud_sp (array) is applied instead of the firmware output while t < lost_s. record:
    list to append golden rows to; sent: list to append (t, forecast) to for every forecast
    handed over (the policy's whole knowledge of the future). learnt: a learnt.Learnt
    state the gateway starts with (lead_in_learnt; None: nothing learnt yet)."""
    # the site JSON's schedule is what the cloud sent: (b) never got it
    d = dispatch.Dispatcher(p if schedule else dict(p, schedule=[]))
    if learnt is not None and not d.learnt.restore(learnt):
        raise ValueError("learnt: state does not fit")
    fc_at = _forecaster(sc, forecast)
    pl = Plant(p)
    n = len(sc["t_s"])
    ok = sc.get("grid_ok")
    out = _empty(n)
    bat = 0.0
    curt = 0
    for i in range(n):
        t = int(sc["t_s"][i])
        pv, it, aux = int(sc["pv_w"][i]), int(sc["it_w"][i]), int(sc["aux_w"][i])
        f = fc_at(i, t)
        if f is not None:
            d.set_forecast(*f)
            if record is not None:
                record.append(("F", f[0], f[1], f[3], f[2]))
            if sent is not None:
                sent.append((t, f))
        up = ok is None or ok[i]
        g_meas = int(round(it + aux - (pv - curt) - bat)) if up else 0
        soc = pl.soc_cpct()
        ccl, dcl = pl.limits()
        sp = d.step(t, pv, it, aux, g_meas, soc, ccl, dcl)
        curt = d.curtail_w
        if record is not None:
            record.append((t, pv, it, aux, g_meas, soc, ccl, dcl, sp, curt,
                           REASONS.index(d.reason)))
        if cloud_sp is not None and lost_s is not None and t < lost_s:
            sp = int(round(cloud_sp[i]))
            curt = int(round(max(0, min(pv, cloud_sp.curt[i]))))
            d.track(sp, curt)
        if up:
            bat = pl.apply(sp, STEP_S)
            _store(out, i, pv, curt, it, aux, bat, pl, sp, d.reason, d.level_w)
        else:
            bat, c, ens = pl.island(pv, it, STEP_S)
            curt = int(round(c))
            d.track(int(round(bat)), curt)       # the PCS followed the island, not the plan
            _store(out, i, pv, c, it, 0, bat, pl, sp, "outage", d.level_w, ens)
    return out


def run_no_battery(sc, p):
    n = len(sc["t_s"])
    out = _empty(n)
    pl = Plant(p)
    ok = sc.get("grid_ok")
    for i in range(n):
        pv, it, aux = int(sc["pv_w"][i]), int(sc["it_w"][i]), int(sc["aux_w"][i])
        if ok is not None and not ok[i]:
            _store(out, i, pv, max(0, pv - it), it, 0, 0.0, pl, 0, "outage", 0,
                   max(0, it - pv))
            continue
        curt = 0 if p["export_allowed"] else max(0, pv - it - aux)
        _store(out, i, pv, curt, it, aux, 0.0, pl, 0, "none", 0)
    return out


def run_setpoints(sc, p, sp_arr, curt_arr, pl=None, i0=0, out=None, reason="lp"):
    """Apply given setpoints and curtailment through the same plant (the LP result), from
    minute i0 for len(sp_arr) minutes (the rolling reference applies an hour at a time)."""
    n = len(sc["t_s"])
    out = _empty(n) if out is None else out
    pl = Plant(p) if pl is None else pl
    ok = sc.get("grid_ok")
    for j in range(len(sp_arr)):
        i = i0 + j
        pv, it, aux = int(sc["pv_w"][i]), int(sc["it_w"][i]), int(sc["aux_w"][i])
        if ok is not None and not ok[i]:
            bat, curt, ens = pl.island(pv, it, STEP_S)
            _store(out, i, pv, curt, it, 0, bat, pl, sp_arr[j], "outage", 0, ens)
            continue
        bat = pl.apply(float(sp_arr[j]), STEP_S)
        curt = float(min(max(curt_arr[j], 0.0), pv))
        if not p["export_allowed"]:
            # the plant can lose a few W to clamping: never export for it
            g = it + aux - (pv - curt) - bat
            if g < 0:
                curt = min(pv, curt - g)
        _store(out, i, pv, curt, it, aux, bat, pl, sp_arr[j], reason, 0)
    return out


def _empty(n):
    return {k: np.zeros(n) for k in ("pv", "curt", "it", "aux", "bat", "grid", "soc", "sp",
                                      "level", "ens")} | {"reason": [""] * n}


def _store(out, i, pv, curt, it, aux, bat, pl, sp, reason, level, ens=0.0):
    # it: the IT demand; ens: the part of it not served (outage); aux: the aux served
    out["pv"][i] = pv
    out["curt"][i] = curt
    out["it"][i] = it
    out["aux"][i] = aux
    out["bat"][i] = bat
    out["ens"][i] = ens
    out["grid"][i] = 0.0 if ens or reason == "outage" else it + aux - (pv - curt) - bat
    out["soc"][i] = pl.e / pl.cap_wh * 10000.0
    out["sp"][i] = sp
    out["reason"][i] = reason
    out["level"][i] = level


# ---- LP optimum -------------------------------------------------------------------

ENS_TOL_WH = 0.01     # the stages after the ENS one may not add more than this


def _lp(pv, load, dt_h, p, e0, e_end, res, ok, peak_floor=0.0, econ=None):
    """One LP (HiGHS via scipy) over periods of dt_h hours (arrays, W means per period):
    stage 0 min energy not served (only when some period has the grid down), stage 1 min
    peak import (>= peak_floor: a peak already set), stage 2 at that peak min grid energy,
    keeping the reserve res (Wh, a penalised shortfall, since the cap outranks it).
    econ (a tariff, _econ()): stages 1-2 become one, min cost (_cost_stage).
    -> (dict of variable arrays, peak W; with econ the 15-min demand peak)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    n = len(pv)
    bwh = float(p["battery_wh"])
    ec, ed = p["eta_c_milli"] / 1000.0, p["eta_d_milli"] / 1000.0
    cmax = min(p["charge_max_w"], p["pcs_w"])
    dmax = min(p["discharge_max_w"], p["pcs_w"])
    emin = bwh * p["soc_min_cpct"] / 10000.0
    emax = bwh * p["soc_max_cpct"] / 10000.0
    # hard bounds: the SOC window only; the reserve (below the cap in the firmware's rule
    # order) is the penalised shortfall S of stage 2
    lo_e = min(emin, e0)
    iCH, iDIS, iIMP, iEXP, iCUR, iENS = (k * n for k in range(6))
    iE = 6 * n
    iP = 7 * n + 1
    iS = iP + 1          # reserve shortfall (Wh) after each period
    nv = iS + n + (0 if econ is None else 1)    # econ: the billed demand Q (W)
    t = np.arange(n)
    one = np.ones(n)
    # imp - exp - ch + dis - curt + ens = load - pv
    rows = np.concatenate([t] * 6)
    cols = np.concatenate([iIMP + t, iEXP + t, iCH + t, iDIS + t, iCUR + t, iENS + t])
    vals = np.concatenate([one, -one, -one, one, -one, one])
    # E[t+1] - E[t] - ec dt ch + dt/ed dis = 0
    rows = np.concatenate([rows, n + t, n + t, n + t, n + t])
    cols = np.concatenate([cols, iE + t + 1, iE + t, iCH + t, iDIS + t])
    vals = np.concatenate([vals, one, -one, -ec * dt_h, dt_h / ed])
    beq = np.concatenate([load - pv, np.zeros(n)])
    Aeq = coo_matrix((vals, (rows, cols)), shape=(2 * n, nv)).tocsr()
    # imp - P <= 0; -E[n] <= -e_end; -E[t+1] - S[t] <= -res[t]; stage >= 1: sum ens dt <= ENS
    rows = np.concatenate([t, t, [n], n + 1 + t, n + 1 + t, np.full(n, 2 * n + 1)])
    cols = np.concatenate([iIMP + t, np.full(n, iP), [iE + n], iE + t + 1, iS + t, iENS + t])
    vals = np.concatenate([one, -one, [-1.0], -one, -one, dt_h])
    bub = np.concatenate([np.zeros(n), [-e_end], -res, [1e12]])   # ENS row: off until stage 0
    Aub = coo_matrix((vals, (rows, cols)), shape=(2 * n + 2, nv)).tocsr()
    up = ok.astype(bool)
    bounds = ([(0, cmax)] * n + [(0, dmax)] * n
              + [(0, None if u else 0) for u in up]
              + [(0, None if (u and p["export_allowed"]) else 0) for u in up]
              + [(0, float(x)) for x in pv]
              + [(0, 0 if u else max(0.0, float(x))) for u, x in zip(up, load)]
              + [(e0, e0)] + [(lo_e, emax)] * n + [(float(peak_floor), None)]
              + [(0, None)] * n)
    if econ is not None:
        Aub, bub = _cost_rows(Aub, bub, econ, n, nv, iIMP)
        bounds.append((float(peak_floor), None))

    def solve(c, what):
        r = linprog(c, A_ub=Aub, b_ub=bub, A_eq=Aeq, b_eq=beq, bounds=bounds, method="highs")
        if r.status != 0:
            raise RuntimeError("LP %s failed: %s" % (what, r.message))
        return r

    if not up.all():
        c0 = np.zeros(nv)
        c0[iENS:iENS + n] = dt_h
        bub[-1] = solve(c0, "stage 0 (energy not served)").fun + ENS_TOL_WH
    if econ is not None:
        x = solve(_cost_stage(econ, n, nv, dt_h, iIMP, iEXP, iCH, iDIS, iCUR, iS, iE),
                  "cost").x
        return _lp_vars(x, n), float(x[nv - 1])
    c1 = np.zeros(nv)
    c1[iP] = 1.0
    peak = solve(c1, "stage 1").x[iP]
    c2 = np.zeros(nv)
    c2[iIMP:iIMP + n] = dt_h
    c2[iCH:iCH + n] = 1e-4 * dt_h      # no simultaneous charge/discharge cycling
    c2[iDIS:iDIS + n] = 1e-4 * dt_h
    c2[iCUR:iCUR + n] = 1e-5 * dt_h
    # a Wh under the reserve for one minute costs as much as 1.7 Wh of import: refilling
    # pays off from the second minute on, as the firmware's reserve rule has it
    c2[iS:iS + n] = 100.0 * dt_h
    bounds[iP] = (float(peak_floor), peak + 1.0)
    x = solve(c2, "stage 2").x
    return _lp_vars(x, n), float(peak)


def _lp_vars(x, n):
    # the LP's variable arrays by name (layout of _lp: ch dis imp exp curt ens, then E)
    v = {k: x[j * n:(j + 1) * n] for j, k in enumerate(("ch", "dis", "imp", "exp", "curt",
                                                         "ens"))}
    v["e"] = x[6 * n:7 * n + 1]
    return v


def _served(sc):
    # the load the LP must serve: all of it with the grid up, the IT load in an outage
    ok = sc.get("grid_ok")
    load = (sc["it_w"] + sc["aux_w"]).astype(float)
    if ok is not None:
        load = np.where(ok > 0, load, sc["it_w"].astype(float))
    return load, (np.ones(len(load), dtype=np.int64) if ok is None else ok)


def _reserve(p, it_w):
    return np.array([float(p["battery_wh"]) * dispatch.floor_cpct(p, int(x)) / 10000.0
                     for x in it_w])


def lp_optimum(sc, p):
    """Perfect-foresight optimum of the firmware's rule order: min energy not served, then
    min peak import; then, at that peak, keep the critical reserve (the firmware's
    floor_cpct for the IT load of each minute) and min grid energy. Returns (sp array W,
    curtail array W, peak W)."""
    load, ok = _served(sc)
    pv = sc["pv_w"].astype(float)
    e0 = float(p["battery_wh"]) * p["soc_init_cpct"] / 10000.0
    v, peak = _lp(pv, load, np.full(len(pv), STEP_S / 3600.0), p, e0, e0,
                  _reserve(p, sc["it_w"]), ok,
                  econ=_econ(sc, p, np.arange(len(pv)), np.ones(len(pv))))
    return v["dis"] - v["ch"], v["curt"].copy(), peak


def run_lp_blocks(sc, p, block_min=15):
    """The LP on block means (fast for weeks: 672 periods instead of 10,080), followed
    minute by minute: the battery holds the block's grid level (sp = net load + the block's
    curtailment - level), steered back to the LP's energy at each block start (the minute
    load varies inside a block, so losses and clamps drift), never outside the SOC window.
    -> (run, LP peak W of block means)."""
    load, ok = _served(sc)
    pv = sc["pv_w"].astype(float)
    n = len(pv)
    pl = Plant(p)
    idx = np.arange(n) // block_min
    cnt = np.bincount(idx).astype(float)

    def mean(x):
        return np.bincount(idx, weights=x) / cnt
    okb = (np.bincount(idx, weights=1 - ok) == 0).astype(np.int64)
    itb = np.round(mean(sc["it_w"].astype(float)))
    v, peak = _lp(mean(pv), mean(load), cnt * STEP_S / 3600.0, p, pl.e, pl.e,
                  _reserve(p, itb), okb, econ=_econ(sc, p, idx, cnt))
    level = v["imp"] - v["exp"]
    out = _empty(n)
    h = STEP_S / 3600.0
    corr = 0.0
    for i in range(n):
        b = idx[i]
        if i % block_min == 0:
            corr = (pl.e - v["e"][b]) / (cnt[b] * h)
        pvi, it, aux = int(sc["pv_w"][i]), int(sc["it_w"][i]), int(sc["aux_w"][i])
        if not ok[i]:
            bat, curt, ens = pl.island(pvi, it, STEP_S)
            _store(out, i, pvi, curt, it, 0, bat, pl, 0, "outage", 0, ens)
            continue
        curt = min(float(pvi), float(v["curt"][b]))
        sp = it + aux - (pvi - curt) - level[b] + corr
        sp = min(sp, max(0.0, (pl.e - pl.emin) * pl.ed / h))
        sp = max(sp, -max(0.0, (pl.emax - pl.e) / pl.ec / h))
        bat = pl.apply(sp, STEP_S)
        if not p["export_allowed"]:
            g = it + aux - (pvi - curt) - bat
            if g < 0:
                curt = min(float(pvi), curt - g)
        _store(out, i, pvi, curt, it, aux, bat, pl, sp, "lp", 0)
    return out, float(peak)


def run_reference(sc, p, horizon_h=24, every_min=60, block_min=15):
    """Reference: perfect forecast. A rolling LP over the realised future, re-solved every
    `every_min` minutes: the first `every_min` minutes in minutes, the rest of `horizon_h`
    in `block_min` blocks; its setpoints for the first `every_min` minutes go through the
    plant, then it re-plans from the plant's SOC. The peak already set is its floor
    (shaving below it buys nothing); the window ends at the starting energy (E[T] >= E[0],
    as the LP) or, if that cannot be reached, anywhere."""
    n = len(sc["t_s"])
    load, ok = _served(sc)
    pv = sc["pv_w"].astype(float)
    res = _reserve(p, sc["it_w"])
    pl = Plant(p)
    out = _empty(n)
    e_start = pl.e
    peak = 0.0
    for i0 in range(0, n, every_min):
        i1 = min(n, i0 + horizon_h * 60)
        a = min(i1, i0 + every_min)
        # period edges: minutes for the first hour, then blocks
        edges = list(range(i0, a + 1)) + list(range(a + block_min, i1, block_min)) + [i1]
        edges = sorted(set(edges))
        lens = np.diff(edges)
        seg = np.repeat(np.arange(len(lens)), lens)

        def mean(x):
            return np.bincount(seg, weights=x[i0:i1]) / lens
        okw = (np.bincount(seg, weights=1 - ok[i0:i1]) == 0).astype(np.int64)
        args = (mean(pv), mean(load), lens * STEP_S / 3600.0, p, pl.e)
        rw = _reserve(p, np.round(mean(sc["it_w"].astype(float))))
        ec = _econ(sc, p, seg, lens, i0)
        try:
            v, _ = _lp(*args, e_start, rw, okw, peak, econ=ec)
        except RuntimeError:
            v, _ = _lp(*args, 0.0, rw, okw, peak, econ=ec)
        k = a - i0
        run_setpoints(sc, p, (v["dis"] - v["ch"])[:k], v["curt"][:k], pl, i0, out,
                      "reference")
        peak = max(peak, float(np.max(out["grid"][i0:a])) if ec is None
                   else _demand_w(sc, p, out["grid"][:a]))
    return out


# ---- cost under the site tariff (site.tariff, firmware/edgefw/tariff.py) ----------------

CFEN_WH = 1e-7          # CNY per Wh of 1 cfen/kWh (0.01 fen = 1e-4 CNY, per 1000 Wh)
DEMAND_WINDOW_MIN = 15  # Chinese meters bill demand on the 15-minute mean import
MONTH_DAYS = 30.0       # a demand charge over part of a month is prorated by days / 30


def _start_day(v, site_path):
    # scenario-only "start_date" (YYYY-MM-DD, the local date of t_s = 0): days after
    # 2025-01-01, the gateway clock's epoch, so the tariff knows the month
    if v is None:
        return 0
    import datetime
    try:
        d = datetime.date.fromisoformat(v)
    except (TypeError, ValueError):
        raise ScenarioError("%s: start_date: %r is not a date YYYY-MM-DD" % (site_path, v))
    return (d - datetime.date(2025, 1, 1)).days


def _minute_tariff(sc, p):
    """Per minute of the scenario: import price, export price (CNY/Wh), 15-min window;
    the firmware's own tariff lookup (month from the clock and start_date), cached in sc."""
    if "_tariff" not in sc:
        from edgefw import tariff
        T = tariff.Tariff(p["tariff"], p["tz_s"], sc.get("day0", 0))
        t = sc["t_s"]
        price = np.array([T.price_cfen(int(x)) for x in t], dtype=float) * CFEN_WH
        ex = p["tariff"]["export_cfen"] if p["export_allowed"] else None
        exp = np.full(len(t), (ex or 0) * CFEN_WH)
        sc["_tariff"] = (price, exp, (t + p["tz_s"]) // (DEMAND_WINDOW_MIN * 60), T)
    return sc["_tariff"]


def _econ(sc, p, seg, lens, i0=0):
    """The LP's cost terms for periods seg (period index of each minute from minute i0,
    lens minutes each); None without a tariff."""
    if "tariff" not in p:
        return None
    price, exp, win, _ = _minute_tariff(sc, p)
    i1 = i0 + len(seg)
    lens = np.asarray(lens, dtype=float)
    first = i0 + np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int)
    days = float(lens.sum()) / 1440.0
    t = p["tariff"]
    return {"price": np.bincount(seg, weights=price[i0:i1]) / lens,
            "dt_h": lens * STEP_S / 3600.0,
            "exp": np.bincount(seg, weights=exp[i0:i1]) / lens,
            "win": np.unique(win[first], return_inverse=True)[1],
            "demand_w": t["demand_cfen_kw"] * CFEN_WH * days / MONTH_DAYS,  # CNY per W
            "cycle_wh": t["cycle_cost_cfen"] * CFEN_WH,
            "pmax": max(float(price.max()), CFEN_WH),
            # a Wh left in the battery: what refilling it at the lowest price would cost
            "e_value": _stored_value_wh(p)}


def _stored_value_wh(p):
    # CNY a Wh of stored energy is worth: its refill at the tariff's lowest price
    from edgefw import tariff
    t = tariff.Tariff(p["tariff"])
    return t.min_cfen * CFEN_WH / (p["eta_c_milli"] / 1000.0)


def _cost_rows(Aub, bub, econ, n, nv, iIMP):
    # rows put before the LP's own (its last row is the ENS bound): the mean import of
    # each 15-min window <= Q, the billed demand. The cap is no constraint here: with a
    # tariff the peak term is the demand charge (issue 17), the cost is what is compared
    from scipy.sparse import coo_matrix, vstack
    win = econ["win"]
    nw = int(win.max()) + 1
    dt = econ["dt_h"]
    tot = np.bincount(win, weights=dt)
    t = np.arange(n)
    rows = np.concatenate([win, np.arange(nw)])
    cols = np.concatenate([iIMP + t, np.full(nw, nv - 1)])
    vals = np.concatenate([dt / tot[win], -np.ones(nw)])
    extra = coo_matrix((vals, (rows, cols)), shape=(nw, nv))
    bub = bub.copy()
    bub[n] = 1e12       # no E[T] >= e_end: the energy left is valued instead (_cost_stage)
    return vstack([extra, Aub]).tocsr(), np.concatenate([np.zeros(nw), bub])


def _cost_stage(econ, n, nv, dt_h, iIMP, iEXP, iCH, iDIS, iCUR, iS, iE):
    # min energy cost - export income + demand charge on Q + throughput cost - the value
    # of the energy left at the end (as cost_metrics' total_adj), with the reserve
    # shortfall as a penalty (CNY)
    c = np.zeros(nv)
    pm = econ["pmax"]
    c[iIMP:iIMP + n] = econ["price"] * dt_h
    c[iEXP:iEXP + n] = -econ["exp"] * dt_h
    wear = (econ["cycle_wh"] + 1e-3 * pm) * dt_h   # + a trifle: no charge and discharge at once
    c[iCH:iCH + n] = wear
    c[iDIS:iDIS + n] = wear
    c[iCUR:iCUR + n] = 1e-4 * pm * dt_h
    c[iS:iS + n] = 100.0 * pm * dt_h             # as stage 2: a Wh under the reserve
    c[nv - 1] = econ["demand_w"]
    c[iE + n] = -econ["e_value"]
    return c


def _demand_w(sc, p, grid):
    # the billed demand so far: the highest 15-min mean import (windows on the clock)
    w = _minute_tariff(sc, p)[2][:len(grid)]
    w = w - w[0]
    m = np.bincount(w, weights=np.clip(grid, 0, None)) / np.maximum(np.bincount(w), 1)
    return float(m.max())


def cost_metrics(out, sc, p):
    """Cost of a run under the site tariff (CNY): energy at the TOU price, export income,
    demand charge on the highest 15-min mean import (prorated days / 30), battery wear at
    cycle_cost per kWh of throughput; total_adj also counts the change of stored energy
    (valued at the lowest import price, charged through eta_c), so a run cannot look cheap
    by emptying the battery at the end."""
    price, exp, _, _ = _minute_tariff(sc, p)
    dt_h = STEP_S / 3600.0
    g = out["grid"]
    imp = np.clip(g, 0, None)
    days = len(g) / 1440.0
    t = p["tariff"]
    m = {"energy_cny": float(np.sum(price * imp) * dt_h),
         "export_cny": float(np.sum(exp * np.clip(-g, 0, None)) * dt_h),
         "demand_kw": _demand_w(sc, p, g) / 1000.0,
         "cycle_cny": float(np.abs(out["bat"]).sum() * dt_h) * t["cycle_cost_cfen"] * CFEN_WH}
    m["demand_cny"] = m["demand_kw"] * t["demand_cfen_kw"] / 1e4 * days / MONTH_DAYS
    m["total_cny"] = m["energy_cny"] - m["export_cny"] + m["demand_cny"] + m["cycle_cny"]
    de = (float(out["soc"][-1]) - p["soc_init_cpct"]) / 10000.0 * p["battery_wh"]
    if not out["bat"].any():
        de = 0.0
    m["total_adj_cny"] = m["total_cny"] - de * _stored_value_wh(p)
    return {k: round(v, 2) for k, v in m.items()}


def _add_costs(res, runs, sc, p):
    # every policy's cost, and the share of the LP's saving over no battery that each
    # of b, c and r reaches (on total_adj_cny)
    pol = res["policies"]
    for k in runs:
        pol[k].update(cost_metrics(runs[k], sc, p))
    a, d = pol["a"], pol["d"]
    for k in ("b", "c", "r"):
        if k in pol:
            pol[k]["cost_saving_share_pct"] = _share(a, pol[k], d, "total_adj_cny", True)
    res["tariff"] = p["tariff"].get("name") or "site.tariff"


# ---- metrics ----------------------------------------------------------------------

POLICIES = ("a", "b", "c", "r", "d")    # output order: the reference between (b) and (d)


EPISODE_GAP_MIN = 60    # grid charging this long apart: a new precharge episode


def precharge_starts(out, tol=1.0):
    """Grid-charge starts: minutes where the battery charges more than the PV surplus gives
    by more than tol (W: the band zero export aims into import, export margin + deadband, is
    not a grid charge) after a minute where it did not. Starts less than
    EPISODE_GAP_MIN minutes after the last grid-charge minute belong to the same precharge
    episode. -> (total starts, most starts in one episode, episodes)."""
    sur = np.clip(out["pv"] - out["curt"] - out["it"] - out["aux"], 0, None)
    gc = (out["bat"] < -tol) & (-out["bat"] > sur + tol) & (out["grid"] > tol)
    total = best = eps = 0
    cur = 0
    last = None
    for i in np.flatnonzero(gc):
        if last is None or i - last > EPISODE_GAP_MIN:
            eps += 1
            cur = 0
        if last is None or i - last > 1:
            total += 1
            cur += 1
            best = max(best, cur)
        last = i
    return total, best, eps


def metrics(out, p, job=None):
    dt_h = STEP_S / 3600.0
    g = out["grid"]
    ens = out["ens"]
    e = energy.Energy(p)
    for i in range(len(g)):
        pv = int(round(out["pv"][i]))
        pvu = int(round(out["pv"][i] - out["curt"][i]))
        # the counters see the load served: IT less what was not served
        e.step(STEP_S * 1000, pv, pvu, int(round(out["it"][i] - ens[i])), int(out["aux"][i]),
               int(round(out["bat"][i])), int(round(g[i])))
    c = e.counters()
    pv_tot = c["pv_wh"] + c["curtail_wh"]
    tol = 1.0
    cmax = min(p["charge_max_w"], p["pcs_w"])
    dmax = min(p["discharge_max_w"], p["pcs_w"])
    soc = out["soc"]
    ens_wh = float(ens.sum() * dt_h)
    m = {
        "peak_import_w": int(round(max(0.0, float(g.max())))),
        "import_kwh": round(float(np.clip(g, 0, None).sum() * dt_h / 1000), 2),
        "export_kwh": round(float(np.clip(-g, 0, None).sum() * dt_h / 1000), 2),
        "export_violations": 0 if p["export_allowed"] else int((g < -tol).sum()),
        "cap_violations": int((g > p["grid_cap_w"] + tol).sum()),
        # energy imported above the cap (what a per-kWh over-cap tariff would bill)
        "cap_excess_kwh": round(float(np.clip(g - p["grid_cap_w"], 0, None).sum() * dt_h
                                      / 1000), 2),
        "soc_violations": int(((soc < p["soc_min_cpct"] - 1) | (soc > p["soc_max_cpct"] + 1))
                              .sum()) if out["bat"].any() else 0,
        "limit_violations": int(((out["bat"] > dmax + tol) | (-out["bat"] > cmax + tol)).sum()),
        "pv_used_pct": round(100.0 * (pv_tot - c["curtail_wh"] - c["pv_grid_wh"])
                             / pv_tot, 2) if pv_tot else 0.0,
        "renewable_share_pct": round(c["renewable_cpct"] / 100.0, 2),
        "co2_kg": round(c["grid_imp_wh"] * p["grid_factor_dg_kwh"] / 1e7, 1),
        # IT load the island could not carry during grid outages (grid_ok = 0)
        "ens_wh": round(ens_wh, 1),
        "ens_kwh": round(ens_wh / 1000.0, 2),
        "curtail_kwh": round(c["curtail_wh"] / 1000.0, 2),
        # charge + discharge energy at the battery terminals (cycling costs money)
        "throughput_kwh": round(float(np.abs(out["bat"]).sum() * dt_h / 1000), 2),
        "soc_end_pct": round(float(soc[-1]) / 100.0, 2),
    }
    # issue 15: a precharge is a planned schedule, at most two starts per episode
    m["precharge_starts"], m["precharge_starts_max"], m["precharge_episodes"] = \
        precharge_starts(out, p["export_margin_w"] + p["deadband_w"] + tol)
    if job is not None:
        t0, t1 = job
        sel = slice(t0 // STEP_S, t1 // STEP_S)
        m["job_import_wh"] = round(float(np.clip(g[sel], 0, None).sum() * dt_h), 1)
        m["job_peak_import_w"] = int(round(max(0.0, float(g[sel].max()))))
        # "zero import" as a zero-export controller can mean it: nothing beyond the band
        # it deliberately aims into import (export margin + setpoint deadband)
        over = np.clip(g[sel] - p["export_margin_w"] - p["deadband_w"], 0, None)
        m["job_import_above_band_wh"] = round(float(over.sum() * dt_h), 1)
    return m


def _share(a, x, d, key, lower_better):
    da = (a[key] - d[key]) if lower_better else (d[key] - a[key])
    dx = (a[key] - x[key]) if lower_better else (x[key] - a[key])
    if abs(da) < 1e-9:
        return None
    return round(100.0 * dx / da, 1)


def evaluate(csv_path, site_path=None, use_forecast=True, keep_runs=False, overrides=None,
             forecast=None, reference=True, lp_block_min=1, queue_path=None, lead_path=None):
    """Run all policies on a scenario; returns a JSON-able dict (runs kept if asked).
    overrides: site fields replacing the site file's (a what-if without editing it).
    forecast: what (b)/(c) get, "tracker" (default; "none" when use_forecast is false) or
    "realised" (the old perfect-forecast cheat, only to measure what it was worth).
    reference: run (r), the rolling perfect-forecast LP. lp_block_min: (d) on blocks of this
    many minutes (1 = every minute; the family bench uses 15 for weeks). lead_path: a
    learning lead-in CSV (lead_in_learnt): (b) and (c) start with what it taught them."""
    sc, p = load_scenario(csv_path, site_path, overrides, queue_path)
    lt = lead_in_learnt(lead_path, p) if lead_path else None
    mode = forecast or ("tracker" if use_forecast else "none")
    job = None
    if "schedule" in p and len(p["schedule"]) >= 2:
        w = p["schedule"][-1]
        job = (w["t0"] - int(sc["t_s"][0]), w["t1"] - int(sc["t_s"][0]))
    runs = {}
    runs["a"] = run_no_battery(sc, p)
    if "tariff" in p:
        # block means net the import of some minutes against the export of others, which
        # a TOU or export price bills apart: with a tariff (d) is the 1-minute LP
        lp_block_min = 1
    if lp_block_min > 1:
        runs["d"], peak = run_lp_blocks(sc, p, lp_block_min)
        sp, curt = runs["d"]["bat"], runs["d"]["curt"]
    else:
        sp, curt, peak = lp_optimum(sc, p)
        runs["d"] = run_setpoints(sc, p, sp, curt)
    runs["b"] = run_firmware(sc, p, forecast=mode, learnt=lt)
    if "link_lost_s" in p and p["link_lost_s"] is not None:
        cs = _CloudSp(sp, curt)
        runs["c"] = run_firmware(sc, p, forecast=mode, cloud_sp=cs,
                                 lost_s=p["link_lost_s"], schedule=True, learnt=lt)
    if reference:
        runs["r"] = run_reference(sc, p)
    res = {"scenario": sc["name"], "steps": len(sc["t_s"]), "lp_peak_w": round(peak),
           "forecast": mode, "lp_block_min": lp_block_min, "lead_in": bool(lead_path),
           "outage_min": int((sc["grid_ok"] == 0).sum()), "jobs": len(sc["jobs"]),
           "policies": {}}
    for k in POLICIES:
        if k in runs:
            res["policies"][k] = metrics(runs[k], p, job)
    a, d = res["policies"]["a"], res["policies"]["d"]
    for k in ("b", "c", "r"):
        if k in res["policies"]:
            x = res["policies"][k]
            x["peak_reduction_share_pct"] = _share(a, x, d, "peak_import_w", True)
            x["pv_use_improvement_share_pct"] = _share(a, x, d, "pv_used_pct", False)
    if "tariff" in p:
        _add_costs(res, runs, sc, p)
    if keep_runs:
        res["_runs"] = runs
        res["_params"] = p
    return res


class _CloudSp(np.ndarray):
    def __new__(cls, sp, curt):
        o = np.asarray(sp).view(cls)
        o.curt = curt
        return o


# ---- golden vectors -----------------------------------------------------------------

def _repo():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _golden_mod():
    import importlib.util
    path = os.path.join(_repo(), "tests", "dual", "golden_dispatch.py")
    spec = importlib.util.spec_from_file_location("golden_dispatch", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def write_golden(path=None):
    """Regenerate tests/dual/golden_dispatch.txt; returns (path, steps)."""
    g = _golden_mod()
    root = os.path.join(_repo(), "scenarios")
    path = path or os.path.join(_repo(), "tests", "dual", "golden_dispatch.txt")
    lines = ["# golden vectors of firmware/edgefw/dispatch.py: closed loop with an integer "
             "plant (tests/dual/golden_dispatch.py)",
             "# scenario block steps sum_sp_w sum_curtail_w sha256(sp,curtail,reason;...)"]
    total = 0
    for name in g.SCENARIOS:
        for b, k, ssp, scu, hx in g.replay(root, name):
            lines.append("%s %d %d %d %d %s" % (name, b, k, ssp, scu, hx))
            total += k
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, total
