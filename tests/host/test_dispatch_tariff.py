"""Cost under a site tariff in the dispatch evaluation (host/edgegw/evalbench.py): the cost
metrics' arithmetic, the LP's cost objective (valley-to-peak arbitrage only when the spread
beats losses + cycle cost, the demand charge on the 15-min mean), `edgegw dispatch eval
--tariff` and its bad input."""
import json
import os

import numpy as np
from click.testing import CliRunner

from edgefw import dispatch
from edgegw import evalbench
from edgegw.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GD = os.path.join(REPO, "scenarios", "tariffs", "guangdong_1_10kv.json")


def two_price(valley, peak, cycle=0, demand=0):
    # valley 0-8 h, peak the rest of the day, all year
    return {"periods": [{"name": "valley", "price_cfen": valley},
                        {"name": "peak", "price_cfen": peak}],
            "seasons": [{"months": list(range(1, 13)), "hours": [0] * 8 + [1] * 16}],
            "demand_cfen_kw": demand, "cycle_cost_cfen": cycle}


def day(load_w, pv_w=None):
    n = len(load_w)
    return {"t_s": np.arange(n) * 60, "pv_w": np.zeros(n, dtype=int) if pv_w is None
            else np.asarray(pv_w), "it_w": np.asarray(load_w), "aux_w": np.zeros(n, dtype=int),
            "day0": 0, "jobs": []}


def params(t, eta=1000, **kw):
    site = {"battery_wh": 100000, "soc_init_cpct": 5000, "soc_min_cpct": 0,
            "soc_max_cpct": 10000, "pcs_w": 50000, "eta_c_milli": eta, "eta_d_milli": eta,
            "reserve_s": 0, "tz_s": 0, "tariff": t}
    site.update(kw)
    return dispatch.validate_params(site)


def lp_cost(sc, p):
    sp, curt, _ = evalbench.lp_optimum(sc, p)
    run = evalbench.run_setpoints(sc, p, sp, curt)
    return run, evalbench.cost_metrics(run, sc, p)


def test_cost_metrics_arithmetic_no_battery():
    sc = day([10000] * 1440)
    p = params(two_price(2000, 10000, demand=400000))     # 0.2 / 1.0 CNY/kWh, 40 CNY/kW
    m = evalbench.cost_metrics(evalbench.run_no_battery(sc, p), sc, p)
    assert m["energy_cny"] == 176.0                     # 80 kWh x 0.2 + 160 kWh x 1.0
    assert m["demand_kw"] == 10.0
    assert m["demand_cny"] == round(10 * 40 / 30.0, 2)  # one day of a 30-day month
    assert m["total_cny"] == m["total_adj_cny"] == round(176 + 400 / 30.0, 2)


def test_lp_moves_energy_from_peak_to_valley_when_it_pays():
    sc = day([10000] * 1440)
    p = params(two_price(2000, 10000), eta=950)
    run, m = lp_cost(sc, p)
    a = evalbench.cost_metrics(evalbench.run_no_battery(sc, p), sc, p)
    assert m["total_adj_cny"] < a["total_adj_cny"] - 20
    h = np.arange(1440) // 60
    assert run["bat"][h < 8].mean() < -1000 and run["bat"][h >= 8].mean() > 1000
    assert (run["grid"] >= -1).all()                    # zero export kept


def charged_kwh(run):
    return float(-run["bat"][run["bat"] < 0].sum()) / 60000.0


def test_lp_does_not_cycle_for_a_spread_below_losses_and_wear():
    sc = day([10000] * 1440)
    # 0.60 -> 0.65 CNY/kWh: 0.65 x 0.9025 < 0.60, no cycle even for free (and the energy
    # it starts with is worth more kept, at its refill price 0.60 / 0.95, than sold)
    run, m = lp_cost(sc, params(two_price(6000, 6500), eta=950))
    assert m["cycle_cny"] == 0.0 and np.abs(run["bat"]).sum() / 60 < 500
    # lossless, spread 0.05 CNY/kWh, wear 0.03 per kWh each way: 0.06 > 0.05, no charging
    # (the 50 kWh it starts with go to the peak: 0.65 - 0.03 beats their value 0.60)
    run, _ = lp_cost(sc, params(two_price(6000, 6500, cycle=300)))
    assert charged_kwh(run) < 0.5
    # wear 0.01 per kWh each way: cycling pays again
    run, _ = lp_cost(sc, params(two_price(6000, 6500, cycle=100)))
    assert charged_kwh(run) > 40


def test_lp_shaves_the_billed_15_min_demand():
    load = [10000] * 1440
    for i in range(720, 750):
        load[i] = 40000                                 # a 30 min surge at noon
    sc = day(load)
    flat = two_price(8000, 8000, demand=400000)
    p = params(flat, eta=950)
    run, m = lp_cost(sc, p)
    a = evalbench.cost_metrics(evalbench.run_no_battery(sc, p), sc, p)
    assert a["demand_kw"] == 40.0
    assert m["demand_kw"] < 12.0 and m["total_adj_cny"] < a["total_adj_cny"]


def test_eval_cli_reports_cost_for_every_policy(tmp_path):
    csv = os.path.join(REPO, "scenarios", "load_drop.csv")
    r = CliRunner().invoke(cli, ["dispatch", "eval", csv, "--tariff", GD, "--start-date",
                                 "2024-07-15", "--no-reference", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["tariff"].startswith("Guangdong")
    pol = res["policies"]
    for k in ("a", "b", "d"):
        for key in ("energy_cny", "demand_cny", "cycle_cny", "total_cny", "total_adj_cny"):
            assert key in pol[k], (k, key)
    assert pol["d"]["total_adj_cny"] <= pol["a"]["total_adj_cny"]
    assert pol["d"]["total_adj_cny"] <= pol["b"]["total_adj_cny"] + 0.01
    assert pol["b"]["cost_saving_share_pct"] is not None
    assert pol["d"]["export_violations"] == 0 and pol["d"]["soc_violations"] == 0
    r = CliRunner().invoke(cli, ["dispatch", "eval", csv, "--tariff", GD, "--no-reference"])
    assert r.exit_code == 0 and "share of optimum cost saving %" in r.output, r.output


def test_eval_cli_bad_tariff_is_one_line_exit_2(tmp_path):
    csv = os.path.join(REPO, "scenarios", "load_drop.csv")
    t = two_price(2000, 10000)
    t["periods"][1]["price_cfen"] = -3
    f = tmp_path / "t.json"
    f.write_text(json.dumps(t))
    for args, msg in (
            (["--tariff", str(f)], "tariff.periods[1].price_cfen: -3 out of range"),
            (["--tariff", str(tmp_path / "none.json")], "not found"),
            (["--tariff", GD, "--start-date", "2024-13-01"], "--start-date"),
            (["--set", 'start_date="July"'], "start_date: 'July' is not a date")):
        r = CliRunner().invoke(cli, ["dispatch", "eval", csv, "--no-reference"] + args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_tou_rule_intermediates_stay_31_bit():
    # rule 5b at the extremes: 10 MW, 10 MWh, a 24 h horizon, the highest prices, wear and
    # demand charge the validation admits; every int local of dispatch, planner, rules,
    # fx and tariff stays a small int on a 32-bit port (the loop tracer of issue 19)
    import sys
    sys.path.insert(0, os.path.join(REPO, "tests", "dual"))
    import test_loop_small_ints as tls
    from edgefw import tariff
    from _helpers import Rand
    t = two_price(0, tariff.PRICE_MAX, cycle=0, demand=tariff.DEMAND_MAX)
    t["seasons"] = [{"months": list(range(1, 13)), "hours": [0, 1] * 12}]
    site = {"battery_wh": 10000000, "pcs_w": 10000000, "grid_cap_w": 10000000,
            "reserve_s": 86400, "horizon_s": 86400, "ramp_w_s": 10000000, "tariff": t,
            "pv_peak_w": 10000000, "tz_s": 50400}
    big = 10000000
    old = tls.TRACED
    tls.TRACED = old + (tariff.__file__,)
    try:
        for now0 in (33000000, (1 << 29) - 86400 * 30, -(1 << 29) + 86400):
            d = dispatch.Dispatcher(dispatch.validate_params(site))
            d.set_forecast(now0, 300, [big] * 288, now0 + 10 ** 6)
            r = Rand(5)

            def run():
                for i in range(60):
                    d.step(now0 + i * 60, r.below(2 * big) - big // 2, r.below(2 * big),
                           r.below(big), r.below(4 * big) - 2 * big, r.below(10001),
                           r.below(big), r.below(big))
            bad = tls._trace(run)
            assert not bad, (now0, sorted(set(bad))[:5])
            assert d.tou.seen == d.t_plan
    finally:
        tls.TRACED = old
