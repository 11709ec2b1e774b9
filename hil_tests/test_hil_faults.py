"""Fault matrix on one gateway (steady site, PCS held at 800 W): each fault, what the
gateway must do, and a check that nothing is lost once it clears (every device polled
again, values equal to the simulated truth, the PCS back at its setpoint)."""
import time

import pytest

from edgegw.vgw import site_config
from hilkit.faults import LineFaults
from hilkit.plugin import new_dut
from hilkit.scenario import RecSite

SPEED = 3    # bus timing is real time: at higher speeds a retried answer ages points (site time)
HOLD_W = 800
CLEAN_S = 3


@pytest.fixture(scope="module")
def gw(hil, tmp_path_factory):
    cfg = site_config(control={"mode": "hold", "hold_w": HOLD_W}, safety={"clean_s": CLEAN_S})
    sim = RecSite(pv=1500, it=2200, aux=400, soc_cpct=6000)
    g = new_dut(hil, cfg, sim, SPEED, str(tmp_path_factory.mktemp("faults")))
    g.start()
    try:
        _healthy(g, 40)
        yield g
    finally:
        g.close()


def _devs(s):
    return [(b, d) for b in s["buses"] for d in s["buses"][b] if not d.startswith("_")]


def _healthy(g, timeout=30):
    """Wait until nothing is stale, the interlock is released and the PCS runs at HOLD_W."""
    return g.wait(lambda s: not s["safety"]["tripped"] and s["sent_w"] == HOLD_W
                  and not any(s["buses"][b][d]["stale"] for b, d in _devs(s))
                  and g.sim.p_set_w == HOLD_W and g.sim.run == 1, timeout, points=False)


def _nothing_lost(g):
    """Every device answers again (two fresh polls each) and shows the truth."""
    s0 = g.status(False)
    ok0 = {d: s0["buses"][b][d]["ok"] for b, d in _devs(s0)}
    g.sim.freeze()
    try:
        s = g.wait(lambda s: all(s["buses"][b][d]["ok"] >= ok0[d] + 2 for b, d in _devs(s)), 20)
        site = s["site"]
        truth = g.sim.summary()
        for k in ("grid_w", "pv_w", "it_w", "bat_w"):
            assert abs(site[k] - truth[k]) <= 2, (k, site[k], truth[k])
        assert abs(site["soc_cpct"] - truth["soc_cpct"]) <= 10
    finally:
        g.sim.freeze(False)
    return s


def _zero_write_after(g, t0):
    """Real time of the first PCS write of p_set_w = 0 after t0 (SimDevice.writes)."""
    for t, ch in list(g.devices["pcs"].writes):
        if t >= t0 and ch.get("p_set_w") == 0:
            return t
    return None


def test_noise_bursts_and_crc_corrupted_frames(gw, report):
    report(scenario="steady", fault="noise bursts 10 % + CRC-corrupted 10 % (all devices)")
    s0 = gw.status(False)
    inj = [LineFaults(gw, n, crc=0.10, noise=0.10, seed=i + 1) for i, n in enumerate(gw.devices)]
    try:
        time.sleep(4)
        s = gw.status(False)
    finally:
        for f in inj:
            f.remove()
    crc = sum(s["buses"][b][d]["crc"] - s0["buses"][b][d]["crc"] for b, d in _devs(s))
    ok = sum(s["buses"][b][d]["ok"] - s0["buses"][b][d]["ok"] for b, d in _devs(s))
    junk = sum(s["buses"][b]["_junk"] - s0["buses"][b]["_junk"] for b in s["buses"])
    bad = sum(f.n["crc"] + f.n["noise"] for f in inj)
    report.figure("%d faults injected: %d CRC errors + %d junk counted, %d good answers, "
                  "no device stale" % (bad, crc, junk, ok))
    report.metric(injected_crc=sum(f.n["crc"] for f in inj),
                  injected_noise=sum(f.n["noise"] for f in inj), counted_crc=crc,
                  counted_junk=junk, ok=ok)
    assert bad > 10
    assert crc >= 1 and crc + junk >= sum(f.n["crc"] for f in inj) // 2
    # retries absorb a 10 % fault rate: never stale, the interlock never trips
    assert not any(s["buses"][b][d]["stale"] for b, d in _devs(s))
    assert not s["safety"]["tripped"] and s["safety"]["trips"] == s0["safety"]["trips"]
    _nothing_lost(gw)


def test_one_device_silent_30s_then_back(gw, report):
    report(scenario="steady", fault="PV meter silent 30 s")
    pv = gw.devices["pv"]
    others = [d for d in gw.devices if d != "pv"]
    s0 = gw.status(False)
    ok0 = {d: s0["buses"][b][d]["ok"] for b, d in _devs(s0)}
    pv.mode = "silent"
    t0 = time.monotonic()
    try:
        s = gw.wait(lambda s: s["buses"]["bus0"]["pv"]["stale"], 15, interval=0.1)
        t_stale = (time.monotonic() - t0) * SPEED
        # PV is derived from the balance meanwhile: control goes on (its accuracy with an
        # unmetered aux load: test_derived_pv_accounts_for_unmetered_aux)
        assert s["site"]["q"]["pv_w"] == "derived", s["site"]["q"]
        time.sleep(max(0.0, 30.0 / SPEED - (time.monotonic() - t0)))
        s = gw.status(False)
    finally:
        pv.mode = "ok"
    for b, d in _devs(s):
        if d != "pv":
            assert not s["buses"][b][d]["stale"], d
            assert s["buses"][b][d]["ok"] > ok0[d] + 10, d   # the others kept polling
    assert s["sp_src"] == "hold" and s["sent_w"] == HOLD_W and not s["safety"]["tripped"]
    s = gw.wait(lambda s: not s["buses"]["bus0"]["pv"]["stale"], 60, points=False)
    t_back = (time.monotonic() - t0) * SPEED - 30
    report.figure("stale after %.1f s, derived from the balance, polled again %.0f s after "
                  "it answered" % (t_stale, t_back))
    report.metric(stale_after_s=round(t_stale, 1), back_after_s=round(t_back, 1))
    _nothing_lost(gw)


def test_derived_pv_accounts_for_unmetered_aux(gw, report):
    report(scenario="steady", fault="PV meter silent: PV derived from the balance")
    pv = gw.devices["pv"]
    pv.mode = "silent"
    try:
        s = gw.wait(lambda s: s["site"]["q"]["pv_w"] == "derived", 15, interval=0.1,
                    points=False)
        err = s["site"]["pv_w"] - gw.sim.summary()["pv_w"]
        report.figure("derived PV off by %d W (aux load %d W, unmetered)"
                      % (err, gw.sim.summary()["aux_w"]))
    finally:
        pv.mode = "ok"
        gw.wait(lambda s: not s["buses"]["bus0"]["pv"]["stale"], 60, points=False)
    assert abs(err) <= 50, err


def test_slave_answering_exceptions(gw, report):
    report(scenario="steady", fault="IT meter answers exception 4 (device failure)")
    it = gw.devices["it"]
    with gw.hold():
        # site time stands still from the count to the switch: polls the site answers
        # while a busy host reads the status would otherwise count as "in flight"
        s0 = gw.status(False)["buses"]["bus0"]["it"]
        it.mode = "exception"
        it.exc_code = 4
    try:
        s = gw.wait(lambda s: s["buses"]["bus0"]["it"]["exceptions"] >= s0["exceptions"] + 5,
                    20, interval=0.2)
        st = s["buses"]["bus0"]["it"]
    finally:
        it.mode = "ok"
    assert st["last_exc"] == 4
    assert st["ok"] == s0["ok"] or st["ok"] <= s0["ok"] + 2   # polls in flight only
    assert not st["stale"]   # an exception answer counts as alive (docs/firmware.md)
    s = _nothing_lost(gw)
    report.figure("%d exceptions counted (code %d), device alive, values fresh after"
                  % (st["exceptions"] - s0["exceptions"], st["last_exc"]))
    report.metric(exceptions=st["exceptions"] - s0["exceptions"])


def _interlock(gw, report, inject, clear, what, expect_reason):
    _healthy(gw)
    t0 = time.monotonic()
    inject()
    try:
        s = gw.wait(lambda s: s["safety"]["tripped"], 20, interval=0.05, points=False)
        assert expect_reason in s["safety"]["reason"], s["safety"]
        gw.wait(lambda s: gw.sim.p_set_w == 0 and gw.sim.run == 0, 10, interval=0.05,
                points=False)
        tz = _zero_write_after(gw, t0)
        assert tz is not None
        react_ms = (tz - t0) * SPEED * 1000
        time.sleep(1.0)
        assert gw.sim.p_set_w == 0 and gw.sim.run == 0      # held while the fault stands
        assert gw.status(False)["sp_w"] == 0
    finally:
        clear()
    t1 = time.monotonic()
    _healthy(gw, 40)
    release_s = (time.monotonic() - t1) * SPEED
    assert release_s >= CLEAN_S - 1
    report.figure("%s: 0 W + stop %.0f ms (site) after the fault, released %.1f s after "
                  "it cleared (clean_s %d)" % (what, react_ms, release_s, CLEAN_S))
    report.metric(reaction_ms=round(react_ms), release_s=round(release_s, 1))
    _nothing_lost(gw)
    return react_ms


def test_bms_alarm(gw, report):
    report(scenario="steady", fault="BMS alarm (pack over-voltage)")

    def inj():
        gw.sim.bms_alarm = 1 << 2

    def clr():
        gw.sim.bms_alarm = 0
    ms = _interlock(gw, report, inj, clr, "alarm", "alarm")
    # one BMS poll period (1000 ms) plus the transaction in flight
    assert ms <= 2 * 1000 + 500, ms


def test_bms_data_stale(gw, report):
    report(scenario="steady", fault="BMS silent (data stale)")
    bms = gw.devices["bms"]

    def inj():
        bms.mode = "silent"

    def clr():
        bms.mode = "ok"
    ms = _interlock(gw, report, inj, clr, "stale", "stale")
    # stale after stale_polls (3) missed polls: within 4 poll periods plus timeouts
    assert ms <= 5 * 1000, ms


def test_pcs_fault(gw, report):
    report(scenario="steady", fault="PCS fault")

    def inj():
        gw.sim.pcs_fault = 1 << 7

    def clr():
        gw.sim.pcs_fault = 0
    ms = _interlock(gw, report, inj, clr, "pcs fault", "pcs fault")
    assert ms <= 2 * 1000 + 500, ms
