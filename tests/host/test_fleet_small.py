"""The fleet load test in a small configuration, checked for what it must show whatever the
machine's speed (no rate asserted): every simulated gateway (firmware Link on CPython, own
client id and key) connects to the real mosquitto, the collectors sharing one shared
subscription split the records between them, and after dedup every record a gateway made
arrived exactly once."""
from edgegw import bench_fleet


def test_small_fleet_exactly_once_through_a_shared_subscription():
    r = bench_fleet.fleet(gateways=30, procs=1, count=4, period_ms=200, collectors=2,
                          deadline_s=120)
    assert r["gateways_connected"] == 30
    # 4 telemetry records + the link's state events (FALLBACK->RECOVERING at connect,
    # ->ONLINE after recover_s if the run lasts that long) each
    assert 30 * 5 <= r["records_sent"] <= 30 * 6
    assert r["lost"] == 0 and r["left_unacked"] == 0
    assert r["records_received"] == r["records_sent"]
    assert r["raw_deliveries"] - r["duplicates"] == r["records_received"]
    assert all(n > 0 for n in r["collector_split"])       # $share really splits
    assert sum(r["collector_split"]) == r["raw_deliveries"]
    assert r["broker_cpu_s"] >= 0 and r["broker_rss_mb"] > 0


def test_small_fleet_comes_back_after_a_broker_kill():
    """SIGKILL the broker under 20 gateways, restart it: every gateway reconnects by itself
    (jittered backoff) and drains what it stored; nothing is left unsent. (Whether a record
    the killed broker had acked but not yet forwarded reaches the collectors is the
    broker's durability, not the gateway's: counted as lost, not asserted.)"""
    r = bench_fleet.fleet(gateways=20, procs=1, count=6, period_ms=300, collectors=2,
                          deadline_s=120, outage_s=1)
    assert r["gateways_connected"] == 20
    assert r["reconnects"] >= 20 and r["reconnect_all_s"] is not None
    assert r["left_unacked"] == 0 and r["ring_dropped"] == 0
    assert r["records_received"] + r["lost"] == r["records_sent"]
    assert r["raw_deliveries"] - r["duplicates"] == r["records_received"]
