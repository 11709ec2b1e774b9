"""edgegw flash: the plan and the dry run (no ROM bootloader on a CI machine)."""
import json
import os
import struct
import subprocess

import pytest
from click.testing import CliRunner

from conftest import VENV_BIN
from edgegw.cli import UserError, cli  # first: importing a cmd module alone is circular
from edgegw import cmd_flash  # noqa: E402

EDGEGW = os.path.join(VENV_BIN, "edgegw")


def _image(path, chip_id):
    # ESP image header: magic, segments, mode, size/freq, entry, extended header (chip id @12)
    h = bytes([0xE9, 3, 2, 0x20]) + struct.pack("<I", 0x40080000) + bytes([0xEE, 0, 0, 0])
    h += struct.pack("<H", chip_id) + bytes(10)
    path.write_bytes(h + bytes(4096))
    return str(path)


@pytest.mark.parametrize("chip,cid,off", [("esp32", 0, 0x1000), ("esp32s2", 2, 0),
                                          ("esp32s3", 9, 0), ("esp32c3", 5, 0),
                                          ("esp32c6", 13, 0)])
def test_plan_offset_per_family(tmp_path, chip, cid, off):
    img = _image(tmp_path / "fw.bin", cid)
    p = cmd_flash.plan(img, "auto", "/dev/ttyUSB0", 460800)
    assert p["chip"] == chip and p["offset"] == off
    names = [n for n, _ in p["steps"]]
    assert names == ["detect", "erase", "write", "verify", "reset"]
    write = dict(p["steps"])["write"]
    assert write[-2:] == ["0x%x" % off, img]
    assert write[:3] == ["esptool", "--chip", chip]


def test_plan_options_and_errors(tmp_path):
    img = _image(tmp_path / "fw.bin", 0)
    p = cmd_flash.plan(img, "esp32", "COM3", 921600, erase=False, verify=False)
    assert [n for n, _ in p["steps"]] == ["detect", "write", "reset"]
    with pytest.raises(UserError, match="--chip esp32s3 but IMAGE"):
        cmd_flash.plan(img, "esp32s3", "COM3", 921600)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(100))
    with pytest.raises(UserError, match="give --chip"):
        cmd_flash.plan(str(raw), "auto", "COM3", 921600)
    # an image without header is fine once the chip is given
    assert cmd_flash.plan(str(raw), "esp32c3", "COM3", 921600)["offset"] == 0


def test_dry_run_cli(tmp_path):
    img = _image(tmp_path / "fw.bin", 0)
    r = CliRunner().invoke(cli, ["flash", img, "--port", "/dev/ttyUSB1", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "write   esptool --chip esp32 --port /dev/ttyUSB1 --baud 460800 write-flash 0x1000" \
        in r.output
    r = CliRunner().invoke(cli, ["flash", img, "--dry-run", "--json", "--no-erase"])
    d = json.loads(r.output)
    assert d["offset"] == 0x1000 and [s["step"] for s in d["steps"]][1] == "write"


def test_dry_run_argv_is_accepted_by_esptool(tmp_path):
    # every printed step parses as a real esptool command line (checked with --help)
    img = _image(tmp_path / "fw.bin", 9)
    for name, argv in cmd_flash.plan(img, "auto", "/dev/null", 460800)["steps"]:
        r = subprocess.run([os.path.join(VENV_BIN, "esptool")] + argv[1:] + ["--help"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (name, r.stderr)


def test_subprocess_bad_arguments(tmp_path):
    img = _image(tmp_path / "fw.bin", 0)
    r = subprocess.run([EDGEGW, "flash", img, "--chip", "esp32c3", "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--chip esp32c3" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([EDGEGW, "flash", str(tmp_path / "none.bin")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "IMAGE" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([EDGEGW, "flash", img, "--port", str(tmp_path / "ttyNONE"),
                        "--baud", "115200"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--port" in r.stderr and "Traceback" not in r.stderr
