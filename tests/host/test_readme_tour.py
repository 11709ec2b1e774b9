"""The README's Quick tour, run as written (issue 14 item 13): every command line of its sh
block runs as a subprocess, in order, against `edgegw sil` and a real mosquitto started here.
Only lines that need hardware (/dev/ttyUSB*) are skipped; /dev/pts/N becomes the virtual
gateway's REPL and 127.0.0.1:1883 the test broker. A line ending in "runs until Ctrl-C"
runs in the background until the end of its paragraph. Each line has a bound."""
import json
import os
import re
import signal
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import REPO, VENV_BIN
from edgegw.mosq import Mosquitto

LINE_S = 120         # bound of one foreground line (a busy machine; they take seconds)
HARDWARE = "/dev/ttyUSB"


def tour():
    """[[line, ...] per paragraph] of the Quick tour's sh block."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = text.split("## Quick tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    paras, cur = [], []
    for ln in block.splitlines():
        if not ln.strip():
            if cur:
                paras.append(cur)
            cur = []
        elif not ln.lstrip().startswith("#"):
            cur.append(ln.strip())
    if cur:
        paras.append(cur)
    return paras


class Acks:
    def __init__(self, broker, device):
        host, port = broker.split(":")
        self.msgs = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            "edgegw/%s/ack" % device, 1)
        self.c.on_message = lambda c, u, m: self.msgs.append(json.loads(m.payload))
        self.c.connect(host, int(port))
        self.c.loop_start()

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class Background:
    """A long-running line: its output collected; the REPL port once it prints it."""

    def __init__(self, cmd, cwd, env):
        self.p = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        self.out = []
        self.port = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for ln in self.p.stdout:
            self.out.append(ln)
            if ln.startswith("REPL: "):
                self.repl = ln.split()[1]
                self.port.set()

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGINT)      # Ctrl-C, as the tour says
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        return "".join(self.out)


def test_readme_quick_tour_runs(tmp_path):
    paras = tour()
    lines = [ln for p in paras for ln in p]
    assert any("--broker" in ln and ln.startswith("edgegw sil") for ln in lines)
    # the tour's repo paths resolve from a scratch directory: what it writes stays there
    for d in ("scenarios", "tests"):
        os.symlink(os.path.join(REPO, d), str(tmp_path / d))
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
               MPLBACKEND="Agg")
    env = {k: v for k, v in env.items() if not k.startswith("EDGEGW_")}
    ran, skipped = [], []
    with Mosquitto() as m:
        broker = "%s:%d" % (m.host, m.port)
        acks = Acks(broker, "edgegw-0001")
        try:
            for para in paras:
                bg = []
                try:
                    for ln in para:
                        if ln.startswith(". ") or ln.startswith("source "):
                            continue                        # the venv: PATH above
                        if HARDWARE in ln:
                            skipped.append(ln)
                            continue
                        cmd = ln.replace("127.0.0.1:1883", broker)
                        if "/dev/pts/N" in cmd:
                            assert bg and bg[-1].port.wait(60), "no REPL port printed"
                            cmd = cmd.replace("/dev/pts/N", bg[-1].repl)
                        if "runs until Ctrl-C" in cmd:
                            b = Background(cmd.split("#")[0], str(tmp_path), env)
                            bg.append(b)
                            assert b.port.wait(60), "".join(b.out)
                            ran.append(ln)
                            continue
                        p = subprocess.run(["bash", "-c", cmd], cwd=str(tmp_path), env=env,
                                           capture_output=True, text=True, timeout=LINE_S,
                                           stdin=subprocess.DEVNULL)
                        assert p.returncode == 0 and "Traceback" not in p.stderr, (
                            ln, p.returncode, p.stdout[-1500:], p.stderr[-1500:])
                        ran.append(ln)
                finally:
                    outs = [b.stop() for b in bg]
                for o in outs:
                    assert "Traceback" not in o and "[gateway exited]" not in o, o[-2000:]
            time.sleep(1.0)
        finally:
            acks.close()
    # what the tour's MQTT steps must have done: a setpoint and a forecast, both accepted
    kinds = {a.get("kind"): a for a in acks.msgs}
    assert "setpoint" in kinds and kinds["setpoint"]["ok"], acks.msgs
    assert "forecast" in kinds and kinds["forecast"]["ok"], acks.msgs
    assert all(HARDWARE in ln for ln in skipped) and len(ran) >= 10, (ran, skipped)
