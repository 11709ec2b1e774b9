"""Fleet load test (`make bench`, issue 18 item 4; docs/fleet.md): N simulated gateways,
each the firmware's own Link + MQTT client (edgefw/link.py, edgefw/mqtt.py) on CPython
with its own client id, key, seq file and ring, publish telemetry at an accelerated rate
to a mosquitto on 127.0.0.1; collectors (the real `edgegw link collect` Collector) share
the records through a shared subscription ($share/collectors/...). Reported: messages/s,
the collectors' duplicates and losses against what every gateway says it sent, and the
broker's CPU (psutil on the mosquitto pid). Bounded in count and time.

    python -m edgegw.bench_fleet [--small] [--gateways N] [--procs P] [--count K]
                                 [--period-ms T] [--collectors C] [--outage-s S]
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time

from edgegw.pairing import Inbox

GROUP = "collectors"


def _raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _record(i, k):
    # a telemetry record of the size the gateway sends (its fields, plausible values)
    return {"sp_w": 0, "curtail_w": 0, "pv_limit_w": None, "safety": "",
            "grid_w": 1200 - k, "pv_w": 3400 + i, "it_w": 4200, "aux_w": 400, "bat_w": 0,
            "soc_cpct": 8320, "ccl_w": 5000, "dcl_w": 5000, "headroom_w": 900,
            "headroom_1h_w": 600, "e": {"pv_wh": 1234 + k, "grid_imp_wh": 99, "it_wh": 4321}}


def _worker(first, n, host, port, count, period_ms, tmp, ev, out, deadline_s):
    """n gateways fleet-<first..first+n-1> in one process, polled round robin.
    ev: (go, run, end) events: start sending; cleared = stand still (the broker is being
    restarted, the collectors resubscribe first); stay connected until end."""
    go, run, end = ev
    _raise_nofile(n + 64)
    from edgefw import clock
    from edgefw.link import Link
    links = []
    for i in range(first, first + n):
        dev = "fleet-%05d" % i
        cfg = {"host": host, "port": port, "key": os.urandom(16).hex(), "keepalive_s": 60,
               "recover_s": 1, "backoff_min_ms": 200, "backoff_max_ms": 5000,
               "ring_kb": 8, "ring_segs": 2, "window": 4}
        links.append(Link(cfg, dev, os.path.join(tmp, dev)))
    t_end = time.monotonic() + deadline_s
    # connect everyone, then wait for the start signal (collectors subscribed)
    while time.monotonic() < t_end and not all(lk.connected for lk in links):
        now = clock.ticks_ms()
        for lk in links:
            lk.poll(now)
        time.sleep(0.005)
    out.put(("up", first, sum(1 for lk in links if lk.connected)))
    go.wait(deadline_s)
    t0 = time.monotonic()
    # stagger: gateway j's k-th record is due at t0 + (j/n + k) * period
    due = [t0 + (j / n) * period_ms / 1000 for j in range(n)]
    sent = [0] * n
    polls = 0
    resumed = None      # when the last stand-still ended
    reconnect_s = None  # from then until every gateway was connected again
    while time.monotonic() < t_end:
        if not run.is_set():
            out.put(("held", first))
            t_h = time.monotonic()
            run.wait(deadline_s)
            resumed = time.monotonic()
            reconnect_s = None
            for j in range(n):   # the stand-still is not time the gateways lived
                due[j] += resumed - t_h
        if resumed is not None and reconnect_s is None and \
                all(lk.connected for lk in links):
            reconnect_s = time.monotonic() - resumed
        now = clock.ticks_ms()
        mono = time.monotonic()
        busy = False
        for j in range(n):
            lk = links[j]
            lk.poll(now)
            if sent[j] < count:
                busy = True
                if mono >= due[j]:
                    lk.telemetry(_record(j, sent[j]))
                    sent[j] += 1
                    due[j] += period_ms / 1000
            elif lk.outbox.inflight or len(lk.outbox.ring):
                busy = True
        polls += 1
        if not busy:
            break
        time.sleep(0.001)
    t1 = time.monotonic()
    st = {"sent": 0, "acked": 0, "tx_all": 0, "connects": 0, "fails": 0, "ring_dropped": 0,
          "spilled": 0, "left_inflight": 0, "left_ring": 0}
    per = {}
    for lk in links:
        s = lk.stats()
        per[lk.device_id] = s["seq"]          # records (telemetry + events) made
        st["sent"] += s["seq"]
        st["acked"] += s["acked"]
        st["tx_all"] += lk.client.tx_msgs    # incl. status and HA discovery
        st["connects"] += s["connects"]
        st["fails"] += s["fails"]
        st["ring_dropped"] += s["ring_dropped"]
        st["spilled"] += s["spilled"]
        st["left_inflight"] += len(lk.outbox.inflight)
        st["left_ring"] += s["ring_n"]
    st["send_s"] = t1 - t0
    st["polls"] = polls
    st["reconnect_all_s"] = reconnect_s
    out.put(("done", first, st, per))
    end.wait(deadline_s)     # stay connected until the collectors counted
    for lk in links:
        lk.close()


def _merge(cols):
    """Unique (device, seq) over all collectors; copies within and across them."""
    seen = {}
    raw = 0
    for c in cols:
        with c.lock:
            raw += c.raw
            for dev, seq, d in c.first:
                seen.setdefault(dev, set()).add(seq)
    return seen, raw


def _cpu(p):
    t = p.cpu_times()
    return t.user + t.system


def _outage(m, run, inbox, cols, nworkers, outage_s, timeout):
    """SIGKILL the broker (clients see their sockets die), keep it down outage_s, then,
    with the gateways standing still, start it on the same port and let the collectors
    subscribe again before the gateways go on (else the first records after the restart
    would have no subscriber: a broker without persistence keeps no sessions)."""
    m.stop()
    time.sleep(outage_s)
    run.clear()
    for _ in range(nworkers):
        inbox.wait(lambda x: x[0] == "held", timeout, "held")
    m.start()
    t_end = time.monotonic() + timeout
    while not all(c.ready.is_set() for c in cols):
        if time.monotonic() > t_end:
            raise TimeoutError("collectors did not subscribe again")
        time.sleep(0.05)
    run.set()


def fleet(gateways=500, procs=2, count=20, period_ms=1000, collectors=2, deadline_s=90,
          outage_s=None):
    """outage_s: kill the broker a third into the run for outage_s, then restart it."""
    import psutil

    from edgegw.cmd_link import Collector
    from edgegw.mosq import Mosquitto
    nofile = _raise_nofile(2 * gateways + 256)   # mosquitto inherits it
    tmp = tempfile.mkdtemp(prefix="edgegw-fleet-")
    ctx = mp.get_context("spawn")
    go, run, end = ctx.Event(), ctx.Event(), ctx.Event()
    run.set()
    inbox = Inbox(ctx.Queue(), keep=True)   # workers' replies of several kinds interleave
    workers = []
    t_start = time.monotonic()
    try:
        with Mosquitto(extra_conf="max_queued_messages 100000\n") as m:
            bp = psutil.Process(m.proc.pid)
            broker = "%s:%d" % (m.host, m.port)
            cols = [Collector(broker, "+", share=GROUP, client_id="collector-%d" % i)
                    for i in range(collectors)]
            for c in cols:
                c.c.reconnect_delay_set(0.05, 0.5)
            per_w = (gateways + procs - 1) // procs
            for first in range(0, gateways, per_w):
                p = ctx.Process(target=_worker, daemon=True, args=(
                    first, min(per_w, gateways - first), m.host, m.port, count, period_ms,
                    tmp, (go, run, end), inbox.q, deadline_s))
                p.start()
                workers.append(p)
            up = sum(inbox.wait(lambda x: x[0] == "up", deadline_s, "up")[2] for _ in workers)
            connect_s = time.monotonic() - t_start
            cpu0 = _cpu(bp)
            cpu_old = 0
            t0 = time.monotonic()
            go.set()
            if outage_s:
                time.sleep(count * period_ms / 3000)
                cpu_old = _cpu(bp) - cpu0
                _outage(m, run, inbox, cols, len(workers), outage_s, deadline_s)
                bp, cpu0 = psutil.Process(m.proc.pid), 0
            done = []
            per = {}
            for _ in workers:
                _, _, st, pd = inbox.wait(lambda x: x[0] == "done", deadline_s + 30, "done")
                done.append(st)
                per.update(pd)
            sent = sum(s["sent"] for s in done)
            # the collectors get what the broker acked within a moment
            t_end = time.monotonic() + 10
            while True:
                seen, raw = _merge(cols)
                got = sum(len(v) for v in seen.values())
                if got >= sent or time.monotonic() > t_end:
                    break
                time.sleep(0.1)
            t1 = time.monotonic()
            cpu_s = cpu_old + _cpu(bp) - cpu0
            rss = bp.memory_info().rss
            end.set()
            split = [len(c.first) for c in cols]
            for c in cols:
                c.close()
        return _figures(locals())
    finally:
        go.set()
        run.set()
        end.set()
        for p in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(tmp, ignore_errors=True)


def _figures(v):
    done = v["done"]
    seen = v["seen"]
    lost = 0
    for dev, n in v["per"].items():
        lost += n - len(seen.get(dev, ()))
    wall = v["t1"] - v["t0"]
    send_s = max(s["send_s"] for s in done)
    acked = sum(s["acked"] for s in done)
    got, raw, cpu_s, up = v["got"], v["raw"], v["cpu_s"], v["up"]
    rec = [s["reconnect_all_s"] for s in done if s["reconnect_all_s"] is not None]
    return {
        "gateways": v["gateways"], "gateways_connected": up, "processes": v["procs"],
        "records_per_gateway": v["count"], "period_ms": v["period_ms"],
        "offered_msgs_per_s": round(v["gateways"] * 1000 / v["period_ms"]),
        "connect_all_s": round(v["connect_s"], 2),
        "records_sent": v["sent"], "records_acked": acked,
        "records_received": got, "raw_deliveries": raw,
        "duplicates": raw - got, "lost": lost,
        "msgs_per_s": round(acked / send_s) if send_s else None,
        # end to end: every record in a collector, counted from the start signal
        "received_per_s": round(got / wall) if wall else None,
        "send_s": round(send_s, 2), "measure_s": round(wall, 2),
        "collectors": v["collectors"], "collector_split": v["split"],
        "all_publishes": sum(s["tx_all"] for s in done),
        "reconnects": sum(s["connects"] for s in done) - up,
        "fails": sum(s["fails"] for s in done),
        "ring_dropped": sum(s["ring_dropped"] for s in done),
        # sent but not acked when the window filled or the link dropped: resent from the
        # ring (the copies the collectors drop by seq)
        "spilled": sum(s["spilled"] for s in done),
        "left_unacked": sum(s["left_inflight"] + s["left_ring"] for s in done),
        "outage_s": v["outage_s"],
        # after the broker restart: until every gateway of a process was connected again
        "reconnect_all_s": round(max(rec), 2) if rec else None,
        "broker_cpu_s": round(cpu_s, 2),
        "broker_cpu_pct": round(100 * cpu_s / wall, 1) if wall else None,
        "broker_rss_mb": round(v["rss"] / 1e6, 1),
        "nofile_limit": v["nofile"],
    }


def run(small=False):
    """steady: 500 gateways at 2 records/s each (1000/s offered); push: 2000 gateways at
    10/s each (20,000/s offered, more than this 2-core machine sends: the saturation
    point). small: 40 gateways x 5 records in one process (make test's smoke run)."""
    if small:
        return {"steady": fleet(gateways=40, procs=1, count=5, period_ms=200, collectors=2,
                                deadline_s=30)}
    return {"steady": fleet(gateways=500, procs=2, count=30, period_ms=500, collectors=2,
                            deadline_s=60),
            "outage": fleet(gateways=500, procs=2, count=30, period_ms=500, collectors=2,
                            deadline_s=60, outage_s=3),
            "push": fleet(gateways=2000, procs=2, count=50, period_ms=100, collectors=2,
                          deadline_s=60)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m edgegw.bench_fleet")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--gateways", type=int)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--period-ms", type=int, default=500)
    ap.add_argument("--collectors", type=int, default=2)
    ap.add_argument("--outage-s", type=float, help="kill the broker a third in, this long")
    a = ap.parse_args(argv)
    if a.gateways:
        r = fleet(a.gateways, a.procs, a.count, a.period_ms, a.collectors,
                  outage_s=a.outage_s)
    else:
        r = run(a.small)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
