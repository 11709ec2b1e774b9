# The control loop's ints stay 31-bit (issue 19): on a 32-bit MicroPython an int beyond
# -2**30..2**30-1 is a heap long int and every op on it allocates. CPython traces every
# line of the app module and the loop's parts (dispatch, planner, rules, fx, control,
# bounds, pcsctl, pvctl, actuator, buses, health, telemetry) while the App runs its loop
# against in-memory Modbus slaves
# (tests/dual/test_app_bounds.Rig: real codec, bus master, site, safety, dispatch) and
# checks every int local, time included (the loop computes with clock.rel(), s since 2025).
import os
import sys

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "dual"))
from test_app_bounds import Rig  # noqa: E402
from edgefw import app as appmod  # noqa: E402
from edgefw import actuator, bounds, buses, control, dispatch, energy, fx, health  # noqa: E402
from edgefw import pcsctl, planner, pvctl, rules, site, telemetry  # noqa: E402

SMALL_MIN = -(1 << 30)
SMALL_MAX = (1 << 30) - 1
TRACED = tuple(m.__file__ for m in (appmod, dispatch, planner, rules, fx, site, energy,
                                     control, bounds, pcsctl, pvctl, actuator, buses, health, telemetry))


def _trace(fn):
    bad = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename not in TRACED:
            return None

        def local(frame, event, arg):
            for k, v in frame.f_locals.items():
                if type(v) is int and not SMALL_MIN <= v <= SMALL_MAX:
                    bad.append((os.path.basename(frame.f_code.co_filename),
                                frame.f_code.co_name, k, v))
            return local
        return local

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return bad


def test_auto_loop_locals_stay_small_ints():
    r = Rig(control={"mode": "auto", "period_ms": 100},
            site={"grid_cap_w": 1000, "battery_wh": 20000, "pcs_w": 5000,
                  "export_allowed": True}, grid_w=4000, it_w=4000)
    try:
        bad = _trace(lambda: r.passes(1500))
        assert r.a.disp is not None and r.a.loops > 5
        assert not bad, sorted(set(bad))[:10]
    finally:
        r.done()
