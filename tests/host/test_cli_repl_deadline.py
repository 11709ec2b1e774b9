"""Every command that talks to a gateway's REPL gives up within a bound when nothing
answers, with one `Error:` line saying what to check, exit 2 (issue 14 item 10). The
silent peers are real: a pty whose other end is held open and never read or written, and a
TCP listener that accepts and stays silent."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import REPO, VENV_BIN

EDGEGW = os.path.join(VENV_BIN, "edgegw")
BOUND_S = 90     # generous: the commands run in parallel on a busy machine; without the
                 # fix they never return


def _cfg(tmp_path):
    from edgefw import config as fwconfig
    p = tmp_path / "site.json"
    p.write_text(json.dumps(fwconfig.default()))
    return str(p)


def _commands(new_port, tmp_path):
    """new_port() -> a port URL for one command (a port is opened exclusively)."""
    cfg = _cfg(tmp_path)
    build = str(tmp_path / "build")
    port = _Ports(new_port)
    return {
        "status": ["status", "--port", port, "--timeout", "3"],
        "config pull": ["config", "pull", "--port", port],
        "config push": ["config", "push", cfg, "--port", port],
        "config diff": ["config", "diff", cfg, "--port", port],
        "deploy --dry-run": ["deploy", "--port", port, "--dry-run", "--no-compile",
                             "--build-dir", build, "--timeout", "3"],
        "deploy": ["deploy", "--port", port, "--no-compile", "--build-dir", build,
                   "--timeout", "3"],
        "console --live": ["console", "--live", "--port", port, "--timeout", "3"],
    }


class _Ports:
    """Formats as a fresh port each time it is used in an argv."""

    def __init__(self, new_port):
        self.new_port = new_port

    def __str__(self):
        return self.new_port()


def _run_all(cmds):
    cmds = {k: [str(x) for x in v] for k, v in cmds.items()}
    procs = {k: subprocess.Popen([EDGEGW] + v, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=REPO,
                                 stdin=subprocess.DEVNULL)
             for k, v in cmds.items()}
    end = time.monotonic() + BOUND_S
    res = {}
    try:
        for k, p in procs.items():
            try:
                out, err = p.communicate(timeout=max(1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                res[k] = ("hung", out, err)
                continue
            res[k] = (p.returncode, out, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return res


def _check(res):
    bad = {}
    for k, (rc, out, err) in res.items():
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok = (rc == 2 and "Traceback" not in err and "b''" not in out + err
              and len(lines) == 1 and lines[0].startswith("Error: ") and "check" in lines[0])
        if not ok:
            bad[k] = (rc, out[-300:], err[-600:])
    assert bad == {}, bad


def test_silent_pty(tmp_path):
    fds = []

    def new_port():
        m, s = os.openpty()     # nobody reads m; s stays open so the port opens fine
        fds.extend((m, s))
        return os.ttyname(s)

    try:
        _check(_run_all(_commands(new_port, tmp_path)))
    finally:
        for fd in fds:
            os.close(fd)


def test_silent_tcp(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])    # accepted, never answered
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        port = "socket://127.0.0.1:%d" % srv.getsockname()[1]
        _check(_run_all(_commands(lambda: port, tmp_path)))
    finally:
        stop.set()
        th.join(2)
        for c in held:
            c.close()
        srv.close()


def test_console_wrong_port():
    r = subprocess.run([EDGEGW, "console", "--port", "/dev/edgegw-no-such-port"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("Error: --port /dev/edgegw-no-such-port")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_deploy_ctrl_c_stops_once_and_keeps_the_manifest_true(tmp_path):
    """One SIGINT mid-copy: deploy stops within a bound (exit 130), every file the device's
    manifest lists is there with that hash, no temp file is left, and the REPL still works."""
    import hashlib
    import shutil
    import signal
    from test_cli_device import PtyRepl
    from edgegw import cmd_deploy
    src = tmp_path / "src"
    for top in ("firmware", "protocols"):
        shutil.copytree(os.path.join(REPO, top), str(src / top),
                        ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    fs = tmp_path / "fs"
    fs.mkdir()
    repl = PtyRepl(str(fs))
    try:
        p = subprocess.Popen([EDGEGW, "deploy", "--port", repl.path, "--no-compile", "--src",
                              str(src), "--build-dir", str(tmp_path / "b")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while len(list(fs.rglob("*.py"))) < 4 and time.monotonic() < end and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, (out, err)
        assert "interrupted:" in err and "Traceback" not in err
        man = json.loads((fs / cmd_deploy.MANIFEST).read_text())["files"]
        assert man
        for rel, h in man.items():
            assert hashlib.sha256((fs / rel).read_bytes()).hexdigest() == h, rel
        assert not list(fs.rglob("*.tmp"))
        with cmd_deploy.Device(repl.path) as dev:
            assert dev.exec("print(6 * 7)").strip() == "42"
    finally:
        repl.close()
