# The hourly ledger in the running firmware: App.control steps it with the energy
# counters and App.telemetry carries it as "g" (the fields protocols/topics.py names).
from edgefw import energy as E
from protocols import topics as T
from test_app_bounds import Rig


def test_app_telemetry_carries_the_hourly_ledger():
    r = Rig(grid_w=500, pv_w=1500, it_w=2000)
    try:
        e = E.Energy(r.a.params)
        e.persist_s = 1 << 29       # no energy.json written in the test's directory
        r.a.use_energy(e)
        r.running()
        r.passes(300)
        rec = r.a.telemetry()
        cur = rec["g"]["cur"]
        assert sorted(cur) == sorted(T.LEDGER_FIELDS + ("t0", "cfe_cpct"))
        assert e.ledger.cur_h is not None and cur["t0"] % 3600 == 0
        # what the ledger holds is what the counters hold (one hour, not rolled yet)
        assert cur["it_wh"] == e.get(E.IT) and cur["pv_wh"] == e.get(E.PV)
        errs = [x for x in T.check_telemetry(rec) if x.startswith("g.")]
        assert errs == [], errs
    finally:
        r.done()
