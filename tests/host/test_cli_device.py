"""edgegw deploy and config push/pull/diff against a real MicroPython REPL on a pty, driven
by real mpremote in raw REPL mode (the unix port stands in for the gateway's REPL)."""
import json
import os
import pty
import select
import shutil
import subprocess
import threading
import tty

import pytest
from click.testing import CliRunner

from conftest import MICROPYTHON, REPO, VENV_BIN
from edgegw.cli import cli  # first: importing a cmd module alone is circular
from edgegw import cmd_config, cmd_deploy  # noqa: E402
from edgefw import config as fwconfig  # noqa: E402

EDGEGW = os.path.join(VENV_BIN, "edgegw")


class PtyRepl:
    """micropython's REPL on one pty, bridged to a second pty whose path a client opens
    (a pty master has no path; this is what the virtual gateway does for its REPL)."""

    def __init__(self, fsdir):
        self.m1, s1 = pty.openpty()
        self.m2, self.s2 = pty.openpty()
        tty.setraw(s1)  # no \n -> \r\n on the REPL side: the raw REPL protocol is exact
        tty.setraw(self.s2)
        self.path = os.ttyname(self.s2)
        env = dict(os.environ, MICROPYPATH="")  # imports come from the deployed directory
        self.proc = subprocess.Popen([MICROPYTHON], stdin=s1, stdout=s1, stderr=s1, cwd=fsdir,
                                     env=env, start_new_session=True)
        os.close(s1)
        self.run = True
        self.th = threading.Thread(target=self._pump, daemon=True)
        self.th.start()

    def _pump(self):
        while self.run:
            r, _, _ = select.select([self.m1, self.m2], [], [], 0.2)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return
                os.write(self.m2 if fd == self.m1 else self.m1, data)

    def close(self):
        self.run = False
        self.proc.kill()
        self.proc.wait()
        self.th.join(2)
        for fd in (self.m1, self.m2, self.s2):
            os.close(fd)


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    d = tmp_path_factory.mktemp("gwfs")
    r = PtyRepl(str(d))
    r.fsdir = str(d)
    yield r
    r.close()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A snapshot of the gateway code: others edit the shared tree while tests run."""
    d = tmp_path_factory.mktemp("src")
    for top in ("firmware", "protocols"):
        shutil.copytree(os.path.join(REPO, top), str(d / top),
                        ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    return str(d)


@pytest.fixture(scope="module")
def built(tmp_path_factory, src):
    b = str(tmp_path_factory.mktemp("build"))
    return ["--build-dir", b, "--src", src]


def _cfg():
    c = fwconfig.default()
    c["devices"] = [d for d in c["devices"] if d["map"] == "sdm630"]
    return c


def test_deploy_then_only_changes(repl, built):
    run = CliRunner()
    r = run.invoke(cli, ["deploy", "--port", repl.path, *built, "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert "protocols/modbus_rtu.mpy" in first["copy"] and "edgefw/config.mpy" in first["copy"]
    assert not any(x.endswith(".py") and x not in ("boot.py", "main.py") for x in first["copy"])
    assert os.path.exists(os.path.join(repl.fsdir, cmd_deploy.MANIFEST))
    r = run.invoke(cli, ["deploy", "--port", repl.path, *built, "--json"])
    assert json.loads(r.output)["copy"] == []
    # a file damaged behind the manifest's back is copied again, and only that one
    with open(os.path.join(repl.fsdir, "protocols", "modbus_rtu.mpy"), "ab") as f:
        f.write(b"junk")
    r = run.invoke(cli, ["deploy", "--port", repl.path, *built, "--dry-run"])
    assert r.exit_code == 0 and "would copy protocols/modbus_rtu.mpy" in r.output
    assert "would copy 1 files" in r.output
    r = run.invoke(cli, ["deploy", "--port", repl.path, *built, "--json"])
    assert json.loads(r.output)["copy"] == ["protocols/modbus_rtu.mpy"]
    # the compiled code runs on the device
    with cmd_deploy.Device(repl.path) as dev:
        out = dev.exec("from protocols import modbus_rtu as m\n"
                       "print(m.__file__, hex(m.crc16(bytes([0x12,0x34,0x23,0x45,0x34,0x56,"
                       "0x45,0x67]))))")
    assert out.split() == ["protocols/modbus_rtu.mpy", "0xdbe2"]


def test_deploy_removes_files_gone_from_the_build(repl, built, tmp_path):
    with cmd_deploy.Device(repl.path) as dev:
        files = cmd_deploy.build(built[1], repo=built[3])
        extra = tmp_path / "old.py"
        extra.write_text("x = 1\n")
        cmd_deploy.deploy(dev, dict(files, **{"edgefw/old.py": str(extra)}), progress=False)
        assert dev.sizes(["edgefw/old.py"])["edgefw/old.py"] == 6
        r = cmd_deploy.deploy(dev, files, progress=False)
        assert r["delete"] == ["edgefw/old.py"] and r["copy"] == []
        assert dev.sizes(["edgefw/old.py"])["edgefw/old.py"] == -1


def test_config_push_pull_diff(repl, built, tmp_path):
    run = CliRunner()
    r = run.invoke(cli, ["deploy", "--port", repl.path, *built])
    assert r.exit_code == 0, r.output
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_cfg()))
    r = run.invoke(cli, ["config", "push", str(a), "--port", repl.path])
    assert r.exit_code == 0, r.output
    # on the device: the firmware's own reader accepts it (CRC trailer, valid)
    with cmd_deploy.Device(repl.path) as dev:
        out = dev.exec("from edgefw import config\nc, e = config.read('config.json')\n"
                       "print(c['device_id'], e)")
    assert out.split() == ["edgegw-0001", "[]"]
    r = run.invoke(cli, ["config", "pull", "--port", repl.path])
    assert r.exit_code == 0 and json.loads(r.output)["device_id"] == "edgegw-0001"
    r = run.invoke(cli, ["config", "diff", str(a), "--port", repl.path])
    assert r.exit_code == 0 and "same" in r.output
    b = _cfg()
    b["device_id"] = "edgegw-0002"
    bf = tmp_path / "b.json"
    bf.write_text(json.dumps(b))
    r = run.invoke(cli, ["config", "diff", str(bf), "--port", repl.path])
    assert r.exit_code == 1 and '+  "device_id": "edgegw-0002"' in r.output


def test_interrupted_push_keeps_old_config(repl, built, tmp_path):
    run = CliRunner()
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_cfg()))
    assert run.invoke(cli, ["config", "push", str(a), "--port", repl.path]).exit_code == 0
    before = open(os.path.join(repl.fsdir, "config.json")).read()
    # the link drops halfway through the transfer of a new config
    b = _cfg()
    b["device_id"] = "edgegw-0009"
    text = fwconfig.dumps(b)
    with cmd_deploy.Device(repl.path) as dev:
        dev.exec("_cp=[]")
        dev.exec("_cp.append(%r)" % text[: len(text) // 2])
    assert open(os.path.join(repl.fsdir, "config.json")).read() == before
    r = run.invoke(cli, ["config", "pull", "--port", repl.path])
    assert json.loads(r.output)["device_id"] == "edgegw-0001"


def test_invalid_push_refused_and_errors_name_fields(repl, tmp_path):
    bad = _cfg()
    bad["buses"][0]["baud"] = 5
    bad["devices"][0]["slave"] = 300
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    r = subprocess.run([EDGEGW, "config", "push", str(f), "--port", repl.path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "buses[0].baud" in r.stderr and "devices[0].slave" in r.stderr
    assert "nothing pushed" in r.stderr


def test_subprocess_deploy_and_pull(repl, built):
    # deployed first (whatever ran before on this worker): then nothing is left to copy
    r = subprocess.run([EDGEGW, "deploy", "--port", repl.path, *built],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([EDGEGW, "deploy", "--port", repl.path, *built,
                        "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "would copy 0 files" in r.stdout
    cfg_path = os.path.join(repl.fsdir, "config.json")
    if not os.path.exists(cfg_path):   # pushed by an earlier test on this worker, or not
        with open(cfg_path, "w") as f:
            f.write(fwconfig.dumps(_cfg()))
    r = subprocess.run([EDGEGW, "config", "pull", "--port", repl.path], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["buses"]


def test_bad_port_messages(tmp_path):
    for args in (["deploy", "--port", str(tmp_path / "nope")],
                 ["config", "pull", "--port", str(tmp_path / "nope")]):
        r = subprocess.run([EDGEGW] + args, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "--port" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([EDGEGW, "deploy"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--port" in r.stderr


def test_validate_and_templates(tmp_path):
    r = subprocess.run([EDGEGW, "config", "template"], capture_output=True, text=True)
    names = [ln.split()[0] for ln in r.stdout.splitlines()]
    assert "two-bus" in names and len(names) >= 3
    for n in names:
        t = cmd_config.template(n)
        assert fwconfig.validate(t) == [], n
        errs = [e for e in cmd_config.check(cmd_config.template(n)) if "no such file" not in e]
        assert errs == [], (n, errs)
    r = CliRunner().invoke(cli, ["config", "template", "nonesuch"])
    assert r.exit_code != 0 and "NAME 'nonesuch'" in r.output
    f = tmp_path / "t.json"
    r = CliRunner().invoke(cli, ["config", "template", "two-bus", "--out", str(f)])
    assert r.exit_code == 0
    r = CliRunner().invoke(cli, ["config", "validate", str(f), "--json"])
    assert json.loads(r.output)["file"] == str(f)
    g = tmp_path / "garbage.json"
    g.write_text("{not json")
    r = CliRunner().invoke(cli, ["config", "validate", str(g)])
    assert r.exit_code != 0 and "json:" in r.output
