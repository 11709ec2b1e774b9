"""The board path without a board: option checks of the plugin, and BoardGateway (REPL over
a serial port with mpremote, simulated devices on the bus adapters) driving a virtual
gateway that plays the board: its REPL pty is the board's USB port, its external bus ptys
are the USB-RS485 adapters."""
import os
import subprocess
import sys

import pytest

from edgegw.simsite import SimSite
from edgegw.vgw import REPO, VirtualGateway, site_config
from hilkit.dut import BoardGateway
from hilkit.scenario import RecSite

pytestmark = pytest.mark.sil_only


@pytest.mark.parametrize("args,named", [
    (["--target", "board"], "--port"),
    (["--target", "board", "--port", "/dev/ttyACM0"], "--bus"),
    (["--target", "board", "--port", "/dev/ttyACM0", "--bus", "bus0"], "--bus 'bus0'"),
    (["--target", "board", "--port", "/dev/ttyACM0", "--bus", "bus0=/dev/ttyUSB0",
      "--speed", "60"], "--speed 60"),
    (["--port", "/dev/ttyACM0"], "--port/--bus"),
    (["--broker", "localhost:x"], "--broker 'localhost:x'"),
    (["--heap", "lots"], "--heap 'lots'"),
])
def test_bad_options_named(args, named):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                        "-p", "no:cacheprovider", os.path.join(REPO, "hil_tests")] + args,
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 4, r.stdout + r.stderr
    assert named in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_board_path_on_a_virtual_board(tmp_path, report):
    report(scenario="board path (virtual board on ptys)", fault="BMS alarm")
    cfg = site_config(control={"mode": "hold", "hold_w": 600}, safety={"clean_s": 2})
    with VirtualGateway(str(tmp_path), cfg, SimSite(), speed=1,
                        external=("bus0", "bus1")) as board:
        sim = RecSite(pv=1500, it=2200, aux=400, soc_cpct=6000)
        with BoardGateway(board.repl_port, dict(board.external_ports), cfg, sim,
                          fresh=False) as g:
            s = g.wait(lambda s: not s["safety"]["tripped"] and s["sent_w"] == 600, 30,
                       points=False)
            assert abs(s["site"]["pv_w"] - 1500) <= 5 and s["platform"] == "unix"
            assert sim.p_set_w == 600 and sim.run == 1
            g.exec("import _thread, time\n"
                   "_thread.start_new_thread(lambda: (time.sleep_ms(300), "
                   "print('HIL-MARK %d' % 42)), ())")
            assert g.expect(r"HIL-MARK (\d+)", 10).group(1) == "42"
            sim.bms_alarm = 1 << 2
            s = g.wait(lambda s: s["safety"]["tripped"], 10, points=False)
            g.wait(lambda s: sim.p_set_w == 0 and sim.run == 0, 10, points=False)
            sim.bms_alarm = 0
            g.wait(lambda s: not s["safety"]["tripped"] and sim.p_set_w == 600, 30,
                   points=False)
            polls = sum(d.requests for d in g.devices.values())
    report.figure("status/exec/expect over the REPL port, %d requests served on the bus "
                  "adapters; alarm -> 0 W + stop -> released" % polls)
