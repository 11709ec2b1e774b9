"""Soak (`make soak`): 20 broker kill/restart cycles with the firmware Link under
MicroPython and a real mosquitto; every record must arrive once after dedup."""
import json

import pytest

from edgegw import bench_link


@pytest.mark.soak
def test_link_soak_20_kill_restart_cycles():
    r = bench_link.cycles(20, outage_s=1.0, online_s=0.5)
    print("link soak:", json.dumps(r, sort_keys=True))
    assert r["sent"] > 20 * 10
    assert r["lost"] == 0 and r["gaps"] == 0
    assert r["dup_after_dedup"] == 0 and r["out_of_order"] == 0
    assert r["ring_dropped"] == 0
