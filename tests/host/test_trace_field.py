"""`edgegw trace decode|stats|export` and `edgegw replay` as the field technician uses them
(issue 14): human units by default, the README's Seplos command, sniffer formats, and a
device answering exception code 0 never making a command traceback."""
import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from conftest import REPO, VENV_BIN
from edgegw.cli import cli

EDGEGW = os.path.join(VENV_BIN, "edgegw")
SEPLOS = os.path.join(REPO, "tests", "data", "traces", "seplos-v3-SG16S200A-all-frames.txt")
README_MAPS = ["--map", "1=seplos_v3", "--map", "0=seplos_v3_bank"]


def _run(*args):
    r = CliRunner().invoke(cli, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def _readme_decode_line():
    with open(os.path.join(REPO, "README.md")) as f:
        for line in f:
            if line.startswith("edgegw trace decode "):
                return line.split()
    raise AssertionError("README has no trace decode line")


def test_readme_seplos_command_decodes_pack_and_bank():
    args = _readme_decode_line()
    assert args[3] == os.path.relpath(SEPLOS, REPO) and args[4:] == README_MAPS, args
    r = subprocess.run([EDGEGW] + args[1:], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = r.stdout
    # the pack (address 1): PIA in human units, and the PIB cell block
    assert "seplos_v3@1 FC04 0x1000+17" in out
    for want in ("v_cv=53.25V", "i_ca=-1.37A", "soc_cpct=83.20%", "t_max_cdc=21.35°C",
                 "cell1_mv=3.327V", "cell16_mv=3.328V", "t_cell1_cdc=21.45°C",
                 "t_env_cdc=22.45°C", "t_mos_cdc=21.15°C"):
        assert want in out, want
    # the bank master (address 0): EIA totals and EIC event codes
    assert "seplos_v3_bank@0 FC04 0x2000+26" in out and "packs=1" in out
    assert "soh_cpct=99.90%" in out and "fet=67(dsg_fet,chg_fet,bit6)" in out
    assert "sys_state=1(discharge)" in out


def test_raw_and_json_keep_integers():
    r = _run("trace", "decode", SEPLOS, "--raw", *README_MAPS)
    assert r.exit_code == 0 and "soc_cpct=8320" in r.output and "t_max_cdc=2135" in r.output
    r = _run("trace", "decode", SEPLOS, "--json", *README_MAPS)
    rows = [json.loads(x) for x in r.output.splitlines()]
    pib = [x for x in rows if x["dir"] == "rsp" and x.get("addr") == 0x1100]
    assert pib and pib[0]["values"]["cell3_mv"] == 3328
    assert pib[0]["values"]["t_cell2_cdc"] == 2115


def _ox(hexstr):
    return " ".join("0x%s" % hexstr[i:i + 2] for i in range(0, len(hexstr), 2))


def test_responses_only_0x_capture_decodes_with_the_map(tmp_path):
    pia = ("01042214cdff776b4080e80122034003e7000a0cff0b7f0d000cff0b810b7e000000b400b4d32e")
    p = tmp_path / "sp05b.txt"
    p.write_text(_ox(pia) + " " + _ox(pia) + "\n" + _ox("018102c191") + "\n")
    for fmt in ([], ["--format", "0x"]):
        r = _run("trace", "decode", str(p), "--map", "1=seplos_v3", *fmt)
        assert r.exit_code == 0, r.output
        assert r.output.count("soc_cpct=83.20%") == 2, r.output
        assert "EXCEPTION 2" in r.output
    r = _run("trace", "stats", str(p), "--map", "1=seplos_v3", "--json")
    d = json.loads(r.output)["devices"][0]
    assert d["requests"] == 2 and d["responses"] == 3 and d["exceptions"] == 1


def test_plain_hex_dump_and_wrong_format(tmp_path):
    p = tmp_path / "dump.hex"
    p.write_text("01 04 10 00 00 11 34 C6\n"
                 "01042214cdff776b4080e80122034003e7000a0cff0b7f0d000cff0b810b7e000000b400b4d32e\n")
    r = _run("trace", "decode", str(p), "--map", "1=seplos_v3")
    assert r.exit_code == 0 and "v_cv=53.25V" in r.output
    r = _run("trace", "decode", str(p), "--format", "dotted")
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "line 1" in r.output
    assert r.output.count("\n") == 1
    q = tmp_path / "prose.txt"
    q.write_text("hello, this is not a capture\n")
    r = _run("trace", "decode", str(q))
    assert r.exit_code == 2 and "--format" in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("cmd", [["trace", "decode"], ["trace", "stats"],
                                 ["trace", "export", "--csv"], ["trace", "export", "--csv",
                                                                "--frames"]])
def test_exception_code_zero_reply_no_traceback(tmp_path, cmd):
    # issue 14.1 reproducer
    p = tmp_path / "t.txt"
    p.write_text(">>> 01.04.10.00.00.11.34.C6\n<<< 01.84.00.43.00\n")
    r = subprocess.run([EDGEGW] + cmd + [str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    if cmd == ["trace", "decode"]:
        assert "ERROR exception response with code 0" in r.stdout
    if cmd == ["trace", "stats"]:
        assert r.stdout.split("\n")[1].split()[3:9] == ["1", "1", "0", "0", "1", "0"]


def test_replay_of_exception_code_zero_no_traceback(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(">>> 01.04.10.00.00.11.34.C6\n<<< 01.84.00.43.00\n")
    r = subprocess.run([EDGEGW, "replay", str(p), "--port", "loop://", "--duration", "0.2",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["requests"] == 0
