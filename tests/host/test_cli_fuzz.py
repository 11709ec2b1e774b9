"""A seeded, bounded fuzz of the `edgegw` CLI as subprocesses (issue 14 item 14): user
mistakes with files (not UTF-8, a folder, missing, empty, garbage, huge, nested too deep;
outputs in a missing folder or onto a folder) for every command that reads or writes one, and
random bad arguments for every command of the click tree. Never a traceback; a user mistake is
exit 2 with an `Error:` line. `make test` runs a small seeded sample (~1 min on a busy
machine); `make soak` (-m soak) many more."""
import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import REPO, VENV_BIN

EDGEGW = os.path.join(VENV_BIN, "edgegw")
RUN_S = 25          # one run's bound; only a command that legitimately runs on (a server
                    # given valid arguments) reaches it, and that is not a failure here
KEY = "00112233445566778899aabbccddeeff"
NOWHERE = "/dev/edgegw-no-such-port"
BROKER = "127.0.0.1:1"   # nothing listens: network commands fail fast, never reach a broker


# ---- the files a user gets wrong ------------------------------------------------------------

def make_files(d, rnd):
    """{kind: path} of bad inputs, plus good ones the commands need besides."""
    f = {}

    def put(name, data):
        p = os.path.join(d, name)
        with open(p, "wb") as fh:
            fh.write(data)
        return p
    f["nonutf8"] = put("latin1.json", b'{"device_id": "caf\xe9", "x": "\xff\xfe"}\n')
    f["garbage"] = put("garbage.json", bytes(rnd.randrange(32, 127) for _ in range(4000)))
    f["binary"] = put("binary.bin", bytes(rnd.randrange(256) for _ in range(4000)))
    f["empty"] = put("empty.json", b"")
    f["huge"] = put("huge.json", b'{"a": [' + b"1," * 1500000 + b"1]}")
    f["deep"] = put("deep.json", b"[" * 200000)
    f["folder"] = os.path.join(d, "a-folder")
    os.mkdir(f["folder"])
    os.mkdir(f["folder"] + ".png")      # for --plot OUT.png
    f["missing"] = os.path.join(d, "missing.json")
    # good inputs
    from edgefw import config as fwconfig
    f["cfg"] = put("site.json", json.dumps(fwconfig.default()).encode())
    f["trace"] = put("t.jsonl", (json.dumps({"trace": 1, "baud": 9600}) + "\n" + "\n".join(
        json.dumps({"t_us": 1000 * i, "bus": "b", "dir": dr, "hex": hx, "flags": []})
        for i, (dr, hx) in enumerate((("req", "010400000002718b"),
                                      ("rsp", "01040400010002" + "2a32"))))).encode() + b"\n")
    f["tel"] = put("tel.jsonl", b"".join(json.dumps(
        {"ts": 1780000000 + 60 * i, "it_w": 1000, "grid_w": 1000, "pv_w": 0}).encode() + b"\n"
        for i in range(3)))
    f["scen"] = os.path.join(REPO, "scenarios", "clear_summer.csv")
    return f


def bad_out(d):
    return {"missing-folder": os.path.join(d, "no-such-folder", "out.x"),
            "onto-folder": os.path.join(d, "a-folder")}


# every command slot reading a file: argv with IN where the bad file goes
READS = [
    ["config", "validate", "IN"],
    ["config", "diff", "IN", "CFG"],
    ["config", "push", "IN", "--port", NOWHERE],
    ["report", "--telemetry", "IN"],
    ["report", "--eval", "IN"],
    ["sil", "--config", "IN", "--duration", "1"],
    ["sil", "--scenario", "IN", "--duration", "1"],
    ["sim", "--config", "IN", "--bus", "bus0=pty", "--duration", "1"],
    ["dispatch", "eval", "IN"],
    ["dispatch", "eval", "SCEN", "--site", "IN"],
    ["tracker", "forecast", "--queue", "IN"],
    ["tracker", "run", "--broker", BROKER, "--device", "x", "--once", "--queue", "IN",
     "--unsigned"],
    ["tracker", "run", "--broker", BROKER, "--device", "x", "--once", "--key-file", "IN"],
    ["tracker", "headroom", "--broker", BROKER, "--device", "x", "--local", "IN"],
    ["link", "setpoint", "100", "--device", "x", "--broker", BROKER, "--key-file", "IN"],
    ["link", "schedule", "IN", "--device", "x", "--broker", BROKER, "--key", KEY],
    ["link", "config", "IN", "--device", "x", "--broker", BROKER, "--key", KEY],
    ["trace", "decode", "TRACE", "--config", "IN"],
]
# every command slot writing a file or folder: OUT is the bad output path
WRITES = [
    ["config", "template", "two-bus", "-o", "OUT"],
    ["trace", "export", "TRACE", "--out", "OUT"],
    ["dispatch", "eval", "SCEN", "--plot", "OUT.png"],
    ["report", "--telemetry", "TEL", "--out", "OUT"],
    ["deploy", "--port", NOWHERE, "--no-compile", "--build-dir", "OUT"],
    ["link", "keygen", "-o", "OUT"],
]
# a user mistake for sure: exit 2 and one Error line
MUST_REFUSE = ("nonutf8", "binary", "folder", "missing")


def run(argv, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEGW_")}
    env["MPLBACKEND"] = "Agg"
    try:
        p = subprocess.run([EDGEGW] + argv, capture_output=True, cwd=cwd, env=env,
                           stdin=subprocess.DEVNULL, timeout=RUN_S)
    except subprocess.TimeoutExpired:
        return None, "", ""
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def problem(argv, rc, out, err, must_refuse):
    """What is wrong with one run, or None."""
    if "Traceback" in err or "Traceback" in out:
        return "traceback"
    if rc is None:
        return "no answer within %d s" % RUN_S if must_refuse else None
    errs = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    if must_refuse and rc != 2:
        return "exit %s, want 2" % rc
    if rc == 2 and not errs:
        return "exit 2 without an Error: line"
    if rc not in (0, 1, 2, 130):
        return "exit %s" % rc
    return None


def _subst(argv, files, slot, value):
    return [value if a == slot else value + ".png" if a == slot + ".png" else
            files["cfg"] if a == "CFG" else files["trace"] if a == "TRACE" else
            files["tel"] if a == "TEL" else files["scen"] if a == "SCEN" else a for a in argv]


def file_cases(files, d):
    for argv in READS:
        for kind in ("nonutf8", "binary", "folder", "missing", "empty", "garbage", "huge",
                     "deep"):
            yield _subst(argv, files, "IN", files[kind]), kind in MUST_REFUSE
    for argv in WRITES:
        for kind, path in bad_out(d).items():
            if kind == "onto-folder" and argv[0] == "deploy":
                continue        # --build-dir is a folder: an existing one is right
            if kind == "onto-folder" and argv[0] == "report":
                continue        # --out is a folder too
            yield _subst(argv, files, "OUT", path), True


# ---- random arguments for every command of the click tree ----------------------------------

def leaf_commands():
    """[(path, click.Command)] of every subcommand."""
    import click
    from edgegw.cli import cli
    out = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for n in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, n), path + [n])
        else:
            out.append((path, cmd))
    walk(cli, [])
    return [(p, c) for p, c in out if p != ["dispatch", "golden"]]   # writes into the repo


def _values(files, d):
    return ["", "-1", "0", "abc", "1e999", "nan", "+", "#", "9" * 40, "64k", "x=y", "=",
            "a/b", "bus0=", "1=nosuchmap", "\u00e9\u00e8", "--", NOWHERE, "socket://127.0.0.1:1",
            files["nonutf8"], files["garbage"], files["empty"], files["folder"],
            files["missing"], files["deep"], os.path.join(d, "no-such-folder", "x")]


def random_argv(rnd, path, cmd, files, d):
    import click
    vals = _values(files, d)
    argv = list(path)
    for p in cmd.params:
        if isinstance(p, click.Argument):
            argv.append(rnd.choice(vals))
        elif isinstance(p, click.Option) and rnd.random() < 0.4:
            name = max(p.opts, key=len)
            if p.is_flag:
                argv.append(name)
            else:
                argv += [name, rnd.choice(vals)]
    if rnd.random() < 0.2:
        argv.append(rnd.choice(["--no-such-option", "extra", "-z"]))
    # keep runners bounded and off real brokers/ports
    names = {o for p in cmd.params for o in getattr(p, "opts", ())}
    for opt, v in (("--duration", "1"), ("--broker", BROKER), ("--timeout", "1")):
        if opt in names and opt not in argv:
            argv += [opt, v]
    if "--once" in names:
        argv.append("--once")
    if "--mqtt" in names and "--mqtt" in argv:
        argv[argv.index("--mqtt") + 1] = BROKER
    return argv


def fuzz(seed, n_random, tmp_path, deadline_s):
    rnd = random.Random(seed)
    d = str(tmp_path)
    files = make_files(d, rnd)
    cases = [(a, m) for a, m in file_cases(files, d)]
    leaves = leaf_commands()
    for _ in range(n_random):
        path, cmd = rnd.choice(leaves)
        cases.append((random_argv(rnd, path, cmd, files, d), False))
    bad = []
    t_end = time.monotonic() + deadline_s
    for argv, must in cases:
        if time.monotonic() > t_end:
            break
        rc, out, err = run(argv, d)
        why = problem(argv, rc, out, err, must)
        if why:
            bad.append((why, argv, rc, err[-400:]))
    return len(cases), bad


def test_cli_fuzz(tmp_path):
    n, bad = fuzz(14, 40, tmp_path, deadline_s=240)
    assert bad == [], "%d of %d runs:\n%s" % (len(bad), n, "\n".join(map(repr, bad[:20])))


@pytest.mark.soak
def test_cli_fuzz_soak(tmp_path):
    n, bad = fuzz(int(os.environ.get("EDGEGW_FUZZ_SEED", "1414")), 1500, tmp_path,
                  deadline_s=3600)
    assert bad == [], "%d of %d runs:\n%s" % (len(bad), n, "\n".join(map(repr, bad[:20])))
