"""Every `make bench` module runs once in its small configuration (bench.py --small), so a
bench that no longer runs (issue 14 item 7: bench_link's ring_kb refused by the ring check)
fails `make test`. Only the shape of the JSON is checked, never a figure or a time."""
import json

import pytest

from edgegw import bench

NAMES = bench.discover()


def test_every_bench_module_is_registered():
    assert {"dispatch", "link", "protocols", "replay", "vgw"} <= set(NAMES)


def _leaves(d, path=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, path + k + ".")
        else:
            yield path + k, v


@pytest.mark.parametrize("name", NAMES)
def test_bench_runs_small(name, tmp_path):
    out = tmp_path / "bench.json"
    rc = bench.main(["--small", "--only", name, "--out", str(out)])
    res = json.loads(out.read_text())
    assert list(res) == [name]
    errors = [(k, v) for k, v in _leaves(res[name]) if k.split(".")[-1] == "error"]
    assert errors == [] and rc == 0, errors
    assert len(res[name]) > 1    # figures besides wall_s
