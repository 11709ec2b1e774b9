"""Link figures (`make bench`): broker kill/restart cycles with the firmware Link running
under MicroPython against a real mosquitto, a collector deduplicating by seq; plus the
QoS 1 publish rate of the firmware MQTT client. The soak (tests/host/test_link_soak.py)
runs the same cycles 20 times."""
import json
import os
import tempfile
import time

from edgegw.cmd_link import Collector
from edgegw.linkproc import LinkProc as _Driver
from edgegw.mosq import Mosquitto

DEV = "gw-bench"


def cycles(n=3, outage_s=0.5, online_s=0.5, keepalive_s=2, telemetry_ms=100):
    """n broker kill/restart cycles; returns the figures as a dict."""
    with Mosquitto() as m, tempfile.TemporaryDirectory(prefix="edgegw-link-") as tmp:
        cfg = {"device_id": DEV, "fs_dir": os.path.join(tmp, "fs"),
               "link": {"host": m.host, "port": m.port, "keepalive_s": keepalive_s,
                        "grace_s": 1, "recover_s": 1, "telemetry_ms": telemetry_ms,
                        "backoff_min_ms": 100, "backoff_max_ms": 1000,
                        # the largest ring the firmware accepts in 8 segments (16 KB each)
                        "ring_kb": 128, "ring_segs": 8}}
        path = os.path.join(tmp, "link.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        col = Collector("%s:%d" % (m.host, m.port), DEV)
        drv = _Driver("link", path)
        fallback_s = []
        recover_s = []
        try:
            drv.state("ONLINE")
            for _ in range(n):
                time.sleep(online_s)
                t0 = time.monotonic()
                m.stop()
                fallback_s.append(drv.state("FALLBACK")["_t"] - t0)
                time.sleep(outage_s)
                # the collector subscribes again before the gateway drains its ring
                drv.send("hold")
                drv.wait(lambda d: d["ev"] == "hold")
                m.start()
                if not col.ready.wait(10):
                    raise TimeoutError("collector did not reconnect")
                t1 = time.monotonic()
                drv.send("run")
                recover_s.append(drv.state("ONLINE")["_t"] - t1)
            # stop making records, let the ring drain, then count
            drv.send("mute")
            t_end = time.monotonic() + 10
            while True:
                drv.send("stats")
                st = drv.wait(lambda d: d["ev"] == "stats")
                s = st["stats"]
                if (s["ring_n"] == 0 and st["inflight"] == 0) or time.monotonic() > t_end:
                    break
                time.sleep(0.2)
            time.sleep(0.3)
            bye_stats = st
        finally:
            drv.close()
            col.close()
        rep = col.report()
        sent = bye_stats["stats"]["seq"]
        return {
            "cycles": n,
            "sent": sent,
            "received": rep["received"],
            "lost": sent - rep["received"],
            "gaps": rep["lost"],
            "dup_raw": rep["dup"],
            "dup_after_dedup": 0,  # the collector keeps each seq once by construction
            "out_of_order": rep["out_of_order"],
            "ring_dropped": bye_stats["stats"]["ring_dropped"],
            "fallback_after_kill_s_max": round(max(fallback_s), 3) if fallback_s else None,
            "online_after_restart_s_max": round(max(recover_s), 3) if recover_s else None,
            # live heap after gc.collect(), sampled every second (MicroPython -X heapsize=2m)
            "heap_live_max_bytes": bye_stats["heap_live_max"],
            # micropython.mem_peak(): counts allocations the GC frees again, so on the
            # unix port it is total bytes allocated, not a live peak
            "mem_peak_bytes": bye_stats["mem_peak"],
        }


def publish_rate(n=2000):
    """QoS 1 messages/s of the firmware client under MicroPython (window of 8)."""
    with Mosquitto() as m:
        drv = _Driver("mqtt", m.host, str(m.port), "10", str(n))
        try:
            d = drv.wait(lambda d: d["ev"] == "done", 60)
        finally:
            drv.close()
    return {"qos1_msgs": n, "qos1_msgs_per_s": int(n * 1000 / max(d["ms"], 1)),
            "mqtt_heap_live_max_bytes": d["heap_live_max"]}


def run(small=False):
    """small: one cycle and a few messages (make test's smoke run; figures meaningless)."""
    r = cycles(1 if small else 3)
    r.update(publish_rate(50 if small else 2000))
    return r


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
