"""edgegw.bench_mem in a small configuration: the JSON has the 32-bit and 64-bit figures,
and they are measured (they differ between the word sizes and between hole sizes), not
constants. No timing and no target is asserted here (targets live in `make bench`)."""
import shutil

import pytest

from edgegw import bench_mem

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node missing")


def test_bench_mem_shape_and_measured():
    r = bench_mem.measure(holes=(256, 16384), passes=2)
    for w, bits in (("w64", 64), ("w32", 32)):
        m = r[w]
        assert m["word_bits"] == bits
        assert m["devices"] == 5 and m["buses"] == 2 and m["maps"] == 3
        assert m["polled_min"] >= 1  # every device answered: the graph really ran
        assert m["mqtt_published_warm"] >= 1  # telemetry_online went through the client
        assert m["bytecode"] > 10000 and m["data"] > 1000
        assert m["resident"] == m["bytecode"] + m["data"]
        assert m["bytecode_from_source"] > m["bytecode"] // 2
        assert m["alloc_target"] == 2048
        for p in ("loop", "telemetry", "telemetry_online", "status"):
            a = m["largest_alloc"][p]
            assert a["met"] == (a["max_bytes"] <= 2048 and not a.get("errors"))
            if bits == 64:  # holes of fixed size on a fixed heap
                assert a["max_bytes"] in (256, 16384)
                assert a["layout_ok"] is True
                assert a["tried"][0][0] == 256 and a["tried"][0][3] >= 8  # holes were made
            else:  # block maps before and after the path
                assert a["method"] == "block map diff"
                assert 16 <= a["max_bytes"] <= 16384 and a["max_bytes"] % 16 == 0
                assert a["allocations"] > 0
    assert r["w32"]["data_target"] == 32 * 1024
    assert "data_target" not in r["w64"]
    # objects are larger on 64 bits: the figures come from the runtimes, not constants
    assert r["w64"]["data"] > r["w32"]["data"]
