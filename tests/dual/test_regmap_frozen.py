# Where regmap.load() finds a map by name (issue 19): frozen into the image first
# (protocols.maps_frozen, made by host/edgegw/mapgen.py), then maps/ next to config.json
# in the working directory, then the package's protocols/maps. Runs on all three runtimes.
import json
import os

import protocols
from protocols import regmap as r
from _helpers import raises

TINY = {"name": "probe", "source": "test: a one-point map", "points": {
    "p_w": {"table": "holding", "addr": 0, "type": "s16"}}}


class _Frozen:
    # what a frozen image's protocols.maps_frozen holds: {name: JSON text}
    MAPS = {"probe": json.dumps(TINY), "sdm630": json.dumps(dict(TINY, name="sdm630-frozen"))}


def _with_frozen(fn):
    protocols.maps_frozen = _Frozen
    try:
        return fn()
    finally:
        delattr(protocols, "maps_frozen")


def _tmpdir(name):
    p = "/tmp/edgegw-test-regmap-%s" % name
    for d in (p, p + "/maps"):
        try:
            os.mkdir(d)
        except OSError:
            pass
    return p


def test_frozen_map_wins_and_source_runs_have_none():
    assert r.frozen_map("sdm630") is None            # a source run: no frozen maps
    m = _with_frozen(lambda: r.load("sdm630"))
    assert m.name == "sdm630-frozen" and "p_w" in m.points
    assert _with_frozen(lambda: r.load("probe")).name == "probe"
    assert _with_frozen(lambda: r.frozen_map("nonesuch")) is None
    assert r.load("sdm630").name == "sdm630"         # back to the package's JSON


def test_maps_next_to_the_config_then_the_package():
    d = _tmpdir("local")
    with open(d + "/maps/probe.json", "w") as f:
        f.write(json.dumps(dict(TINY, name="probe-local")))
    here = os.getcwd()
    os.chdir(d)
    try:
        assert r.load("probe").name == "probe-local"
        assert r.load("sdm630").name == "sdm630"     # not in maps/: the package's own
        assert _with_frozen(lambda: r.load("probe")).name == "probe"   # frozen first
        e = raises(r.RegMapError, r.load, "nonesuch")
        assert "no such file maps/nonesuch.json or " in str(e) and e.code == 2, str(e)
    finally:
        os.chdir(here)
        os.remove(d + "/maps/probe.json")


def test_bad_json_in_maps_names_the_file():
    d = _tmpdir("bad")
    with open(d + "/maps/broken.json", "w") as f:
        f.write("{not json")
    here = os.getcwd()
    os.chdir(d)
    try:
        e = raises(r.RegMapError, r.load, "broken")
        assert "maps/broken.json" in str(e), str(e)
    finally:
        os.chdir(here)
        os.remove(d + "/maps/broken.json")
