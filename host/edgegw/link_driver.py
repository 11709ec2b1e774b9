# Runs the firmware MQTT client / Link as a real MicroPython (or CPython) process for the
# host tests and benches (edgegw.linkproc starts it and reads it). Prints one JSON object
# per line on stdout; reads commands (one per line) on stdin without blocking.
#   micropython host/edgegw/link_driver.py mqtt HOST PORT KEEPALIVE_S N [CA]
#       (CA given: TLS, broker verified against that CA file; "" = TLS without verifying)
#       publish N QoS 1 messages on drv/out, echo drv/in messages to drv/echo,
#       print {"ev": "done", ...} when all are acked; "quit" on stdin ends.
#   micropython host/edgegw/link_driver.py link CFG.json
#       run Link with injected telemetry every link.telemetry_ms; prints state changes,
#       setpoint changes, counters. stdin: "hold" (stop polling the link), "run", "mute"
#       (stop making telemetry), "stats", "quit".
import json
import select
import sys

from edgefw import clock

try:
    import micropython

    def mem_peak():
        try:
            return micropython.mem_peak()
        except AttributeError:
            return -1
except ImportError:
    def mem_peak():
        return -1


_live = [0]


def heap_sample():
    # live heap after a collection (micropython.mem_peak counts allocations that the GC
    # later frees, so on the unix port it only ever grows)
    try:
        import gc
        gc.collect()
        a = gc.mem_alloc()
    except (ImportError, AttributeError):
        return
    if a > _live[0]:
        _live[0] = a


def out(d):
    print(json.dumps(d))
    try:
        sys.stdout.flush()
    except AttributeError:
        pass


class Stdin:
    def __init__(self):
        self.p = select.poll()
        self.p.register(sys.stdin, select.POLLIN)

    def lines(self):
        got = []
        while self.p.poll(0):
            ln = sys.stdin.readline()
            if not ln:
                got.append("quit")
                break
            got.append(ln.strip())
        return got


def run_mqtt(host, port, ka, n, ca=None):
    # ca: a CA file (TLS, verified), "noca" (TLS without one), "insecure" (TLS unverified)
    from edgefw import mqtt
    insecure = ca == "insecure"
    if ca in ("noca", "insecure"):
        ca = ""
    c = mqtt.MQTTClient("drv", host, port, keepalive_s=ka, tls=ca is not None, ca=ca or None,
                        insecure=insecure,
                        will=("drv/status", b"offline", 1, True),
                        backoff_min_ms=100, backoff_max_ms=1000)
    acked = []
    c.on_puback = acked.append
    t_conn = []

    def on_connect():
        if not t_conn:
            t_conn.append(clock.ticks_ms())
        out({"ev": "connected"})
    c.on_connect = on_connect
    c.on_disconnect = lambda r: out({"ev": "disconnected", "reason": r})

    def on_msg(topic, payload, retain):
        c.publish("drv/echo", bytes(payload), 1)
    c.on_message = on_msg
    c.subscribe("drv/in", 1)
    sent = 0
    done = False
    inp = Stdin()
    while True:
        for ln in inp.lines():
            if ln == "quit":
                c.disconnect()
                out({"ev": "bye", "mem_peak": mem_peak()})
                return
        now = clock.ticks_ms()
        fails = c.fails
        c.poll(now)
        if c.fails != fails:
            out({"ev": "fail", "error": c.last_error})
        while c.connected and sent < n and len(c.inflight) < 8:
            c.publish("drv/out", b"%d" % sent, 1)
            sent += 1
        if sent == n and not c.inflight and not done:
            done = True
            ms = clock.ticks_diff(clock.ticks_ms(), t_conn[0])
            heap_sample()
            out({"ev": "done", "sent": sent, "acked": len(acked), "pings_ok": c.connected,
                 "ms": ms, "mem_peak": mem_peak(), "heap_live_max": _live[0]})
        clock.sleep_ms(2)


def run_link(path):
    from edgefw import link
    with open(path) as f:
        cfg = json.load(f)
    lk = link.Link(cfg["link"], cfg["device_id"], cfg["fs_dir"], limits=cfg.get("limits"))
    period = lk.cfg["telemetry_ms"]
    local_w = cfg.get("local_w", 0)
    inp = Stdin()
    hold = False
    state = None
    sp = None
    n = 0
    t_next = clock.ticks_ms()
    t_heap = t_next
    mute = False
    configs = []
    lk.on_config = lambda c: configs.append(c) or []
    while True:
        for ln in inp.lines():
            if ln == "quit":
                out({"ev": "bye", "stats": lk.stats(), "mem_peak": mem_peak(), "n": n,
                     "heap_live_max": _live[0]})
                return
            if ln == "hold":
                hold = True
                out({"ev": "hold"})
            elif ln == "run":
                hold = False
            elif ln == "mute":  # stop making telemetry (to count what arrived)
                mute = True
            elif ln == "stats":
                out({"ev": "stats", "stats": lk.stats(), "mem_peak": mem_peak(), "n": n,
                     "heap_live_max": _live[0], "inflight": len(lk.outbox.inflight)})
        now = clock.ticks_ms()
        if not hold:
            lk.poll(now)
        if lk.state != state:
            state = lk.state
            out({"ev": "state", "state": state, "ms": now})
        w = lk.setpoint(clock.time(), local_w)
        if w != sp:
            sp = w
            out({"ev": "sp", "w": w, "state": lk.state})
        while configs:
            out({"ev": "config", "config": configs.pop(0)})
        if clock.ticks_diff(now, t_heap) >= 1000:
            t_heap = now
            heap_sample()
        if not mute and clock.ticks_diff(now, t_next) >= 0:
            t_next = clock.ticks_add(t_next, period)
            n += 1
            lk.telemetry({"grid_w": 1000 + n, "pv_w": 0, "it_w": 1000, "aux_w": 0,
                          "bat_w": 0, "soc_cpct": 5000, "sp_w": sp or 0, "curtail_w": 0})
        clock.sleep_ms(2)


def main(argv):
    if argv[1] == "mqtt":
        run_mqtt(argv[2], int(argv[3]), int(argv[4]), int(argv[5]),
                 argv[6] if len(argv) > 6 else None)
    elif argv[1] == "link":
        run_link(argv[2])
    else:
        raise SystemExit("usage: link_driver.py mqtt|link ...")


if __name__ == "__main__":
    main(sys.argv)
