# Gateway-side script of `edgegw.bench_mem` (runs on the unix and the 32-bit MicroPython,
# not on CPython): builds the object graph of the typical site (5 devices on 2 buses,
# 3 maps, dispatch, energy, link with its MQTT client and ring) the way App builds it,
# and measures the heap. Prints one line "MEMPROBE {json}".
#
#   micropython memprobe.py SPLIT CODE_DIR LOOP_PASSES [H ...]
#
# SPLIT: what gc.mem_free() adds beyond the real free heap (the WebAssembly port's heap
# grows on demand and reports the growth it could still make; 0 on unix). CODE_DIR:
# where protocols/ and edgefw/ are imported from (.mpy or .py), first on sys.path.
# H: hole sizes (bytes) of the largest-allocation test on unix (ascending); on the
# WebAssembly port any H turns the block-map comparison on.
#
# Resident = gc.mem_alloc() after gc.collect(), relative to the bare interpreter running
# this script. bytecode = what importing the gateway's modules adds (from .mpy: the code
# objects, their constants and the module dicts; freezing moves the code and constants to
# flash, so this is an upper bound of the flash saving); data = the rest (the App graph).
#
# Largest allocation on the WebAssembly port: it frees nothing within a top-level call, so
# micropython.mem_info(1)'s block map after a path, compared with the one before it, shows
# every block the path allocated (or grew) with its size (edgegw.bench_mem compares them).
# On unix (fixed -X heapsize), on a heap of fixed free holes: after gc.collect() the heap
# is filled with blocks of H bytes until no H run is left, then every other one is freed.
# Every free run is then at most H bytes, so an allocation of more than H raises
# MemoryError (the loop catches it and counts an error). A path that runs three times
# with neither has made no single allocation above H (every path ran once before, to warm
# caches). The layout is checked each time: an allocation of H must fit and one of H + one
# GC block must not. Holes cannot be kept on the WebAssembly port: its heap grows (doubling)
# whenever an allocation finds no free run.
import gc
import sys

import micropython

SPLIT = int(sys.argv[1])
sys.path.insert(0, sys.argv[2])
LOOP_PASSES = int(sys.argv[3])  # control loop passes per run of the loop path
HOLES = [int(x) for x in sys.argv[4:]]
W64 = sys.maxsize > 0xFFFFFFFF
WASM = sys.platform == "webassembly"
BLOCK = 32 if W64 else 16  # MicroPython's GC block: 4 machine words
_ONE = (0,)
_PIN_SIZES = (65536, 8192, 1024, 128, BLOCK)


def free():
    return gc.mem_free() - SPLIT


def total():
    return gc.mem_alloc() + free()


# The WebAssembly port collects only between top-level calls (gc.collect() in a run just
# marks one due): every figure is read at the start of a step of main(), a generator that
# tools/mpy32.mjs steps one top-level call at a time (MPY32_PHASES); on unix the loop at
# the bottom steps it with gc.collect() in between.


# ---- the simulated devices (not part of the gateway's figures) ---------------------------

class Slave:
    def __init__(self, mapname, slave, vals):
        self.m = regmap.load(mapname)
        self.slave = slave
        self.tab = {"coil": {}, "discrete": {}, "input": {}, "holding": {}}
        for k in vals:
            t, a, w = regmap.encode_point(self.m, k, vals[k], self.tab[self.m.points[k]["table"]])
            for i in range(len(w)):
                self.tab[t][a + i] = w[i]

    def answer(self, q):
        t = self.tab[regmap.FC_TABLE[q.fc]]
        if q.fc in (1, 2, 3, 4):
            return rtu.encode_response(self.slave, q.fc, [t.get(q.addr + i, 0) for i in range(q.qty)])
        for i in range(len(q.values)):
            t[q.addr + i] = q.values[i]
        if q.fc in (5, 6):
            return rtu.encode_response(self.slave, q.fc, addr=q.addr, qty=q.values[0])
        return rtu.encode_response(self.slave, q.fc, addr=q.addr, qty=q.qty)


def _sim():
    global regmap, rtu
    from protocols import modbus_rtu as rtu
    from protocols import regmap
    from protocols.membus import MemBus    # (in the "sim" figure, not the gateway's)
    return {
        "bus0": MemBus([Slave("sunspec_pcs", 1, {"p_w": 0, "fault": 0, "state": 4, "run": 1}),
                        Slave("sdm630", 2, {"p_w": 1200}), Slave("sdm630", 3, {"p_w": 3000}),
                        Slave("sdm630", 4, {"p_w": 4000})]),
        "bus1": MemBus([Slave("seplos_v3", 1, {"soc_cpct": 6000, "v_cv": 5300, "i_ca": 0,
                                               "ccl_ca": 10000, "dcl_ca": 10000,
                                               "alarm": 0, "protect": 0})]),
    }


def _app(appmod, config, hal, buses):
    # the factory-default site with a link whose broker is unreachable (no socket on the
    # 32-bit runtime): telemetry goes to the store-and-forward ring
    cfg = config.default()
    cfg["link"] = {"host": "broker.invalid", "ring_kb": 32, "ring_segs": 16}
    cfg["console"] = True  # no console line per status period
    cfg["status_s"] = 0    # telemetry is driven by the paths below
    cfg["wdt_ms"] = 0
    errs = config.validate(cfg)
    assert not errs, errs
    hal.clock_setup = lambda: (1, None)  # hal_unix's reads os.getenv: not in the wasm port
    app = appmod.App(cfg, open_bus=lambda b: buses[b["name"]])
    if app.link is not None and app.link.client is not None:
        app.link.client.want = False
    return app


def _paths(appmod, app, clock, mqtt):

    def ok():
        n = 0
        for m in app.masters.values():
            for st in m.st:
                n += st.ok
        return n

    def loop():
        # at least LOOP_PASSES passes, a control step each, and until every device was
        # read again (bus reads run on their period in real time; bounded)
        n0 = ok()
        i = 0
        t_end = clock.ticks_add(clock.ticks_ms(), 3000)
        while i < LOOP_PASSES or (ok() < n0 + len(app.devs)
                                  and clock.ticks_diff(t_end, clock.ticks_ms()) > 0):
            app.ctl_due = clock.site_ms()
            app.step()
            i += 1

    def telemetry():
        app.publish()  # telemetry record, link (broker down: into the ring)

    class Sink:  # the broker's end of a connection: takes every byte
        def write(self, b):
            return len(b)

    def telemetry_online():
        # the same with the link up: JSON, MQTT packet, send queue (no socket here: the
        # client writes to a sink; the acks never come, so the windows are emptied after)
        lk = app.link
        c = lk.client
        st, sock, lst = c.state, c.conn.sock, lk.state
        c.state, c.conn.sock, lk.state = mqtt.UP, Sink(), "ONLINE"
        try:
            app.publish()
            c.conn.flush()
        finally:
            c.state, c.conn.sock, lk.state = st, sock, lst
            del lk.outbox.inflight[:]
            del c.inflight[:]

    def status():
        # what edgegw status and the virtual gateway's console run: app.print_status()
        with open("status.json", "w") as f:
            appmod.print_status(True, f)

    return (("loop", loop), ("telemetry", telemetry), ("telemetry_online", telemetry_online),
            ("status", status))


def _warm(app, clock, paths):
    # every device polled once (bounded), every path run once: caches and plans built
    t_end = clock.ticks_add(clock.ticks_ms(), 5000)
    while clock.ticks_diff(t_end, clock.ticks_ms()) > 0:
        app.step()
        if min([st.ok for m in app.masters.values() for st in m.st]) > 0:
            break
    for _n, f in paths:
        f()

# ---- largest allocation -------------------------------------------------------------------


def _block(n):
    # one allocation of exactly n bytes (n a multiple of BLOCK): a tuple is a single
    # allocation of 2 + len words (a bytearray would be two: header and buffer)
    return _ONE * (n // (BLOCK // 4) - 2)


def _fill(h, holes, pins):
    # see the header. Holes are only placed in free runs of h or more, in address order,
    # so neighbouring holes have neighbouring indices: letting every other one go (freed
    # by the next collection) leaves free runs of exactly h. Returns the runs made.
    # Allocations go in batches of half of what the free heap could take: gc.mem_free()
    # walks the whole heap, once per allocation would be quadratic.
    nh = _batches(holes, 0, h, 4 * BLOCK, 1)
    npin = 0
    for s in _PIN_SIZES:  # the rest with pins, large to small (few objects)
        npin = _batches(pins, npin, s, 0, 3)
    for i in range(0, nh, 2):
        holes[i] = None
    return (nh + 1) // 2


def _batches(lst, i, s, margin, growths):
    # fill lst[i:] with s-byte blocks while the free heap has room; stop after `growths`
    # heap growths (the WebAssembly port: no free run of s was left)
    grew = 0
    while i < len(lst) and grew < growths:
        k = (free() - margin) // s
        if k <= 0:
            break
        k = min(k // 2 + 1, len(lst) - i)
        t0 = total()
        try:
            for _ in range(k):
                lst[i] = _block(s)
                i += 1
        except MemoryError:
            break
        if total() != t0:
            grew += 1
    return i


def _serves(n):
    # True when one allocation of n bytes is served
    try:
        b = _block(n)
    except MemoryError:
        return False
    b = None
    return True


def _trial(app, clock, f, h, holes, pins, out):
    """Steps of one hole size: the path (three runs) on a heap of h holes; out gets
    [h, ran without error or growth, holes layout checked, holes]."""
    nh = _fill(h, holes, pins)
    gc.collect()
    yield  # the holes are freed by this collection
    lay = _serves(h) and not _serves(h + BLOCK)  # a MemoryError leaves the holes as they are
    t0 = total()
    e0 = app.nerr  # the loop catches a MemoryError and counts it as an error
    ok = True
    try:
        for _ in range(3):
            f()
    except MemoryError:
        ok = False
    ok = ok and total() == t0 and app.nerr == e0
    out.extend((h, ok, lay and nh >= 8, nh))
    for d in app.down.values():
        d[0] = clock.ticks_ms()  # a bus a MemoryError took down: reopened at the next pass
    _release(holes, pins)
    yield


def _release(holes, pins):
    for i in range(len(pins)):
        pins[i] = None
    for i in range(len(holes)):
        holes[i] = None
    gc.collect()


def _largest(app, clock, f, hs, res):
    """res gets the smallest hole size in hs (ascending) the path runs in: its largest
    single allocation is at most that and more than the size tried before it."""
    holes = [None] * 4096
    pins = [None] * 8192
    tried = []
    prev = 0
    res["max_bytes"] = None
    for h in hs:
        out = []
        for _ in _trial(app, clock, f, h, holes, pins, out):
            yield
        tried.append(out)
        if out[1]:
            res["max_bytes"] = h
            break
        prev = h
    res["above_bytes"] = prev
    res["layout_ok"] = tried[-1][2]  # of the run that passed
    res["tried"] = tried


def main():
    gc.collect()
    yield
    a0 = gc.mem_alloc()
    from edgefw import app as appmod
    from edgefw import clock, config, energy, hal, link, mqtt  # noqa: F401
    gc.collect()
    yield
    a1 = gc.mem_alloc()
    buses = _sim()
    gc.collect()
    yield
    a_sim = gc.mem_alloc()
    app = _app(appmod, config, hal, buses)
    gc.collect()
    yield
    a2 = gc.mem_alloc()
    appmod._app = app
    paths = _paths(appmod, app, clock, mqtt)
    _warm(app, clock, paths)
    gc.collect()
    yield
    a3 = gc.mem_alloc()
    res = {"word_bits": 64 if W64 else 32, "gc_block": BLOCK, "baseline": a0,
           "bytecode": a1 - a0, "sim": a_sim - a1, "data": a2 - a_sim,
           "data_warm": a3 - a_sim, "resident": a1 - a0 + a2 - a_sim,
           "resident_warm": a1 - a0 + a3 - a_sim,
           "loops": app.loops, "devices": len(app.devs), "buses": len(app.masters),
           "maps": len(appmod.devices._maps),
           "polled": min([st.ok for m in app.masters.values() for st in m.st]),
           "errors": list(app.errors), "mqtt_tx": app.link.client.tx_msgs}
    if HOLES and WASM:
        # this port frees nothing within a call: the block map after a path (printed
        # beside the one before it, the host compares them) shows every allocation it made
        for name, f in paths:
            gc.collect()
            yield
            e0 = app.nerr
            print("MEMMAP-BEFORE", name)
            micropython.mem_info(1)
            f()
            print("MEMMAP-AFTER", name)
            micropython.mem_info(1)
            print("MEMMAP-END", name, app.nerr - e0)
        res["largest_alloc"] = "blockmap"
    elif HOLES:
        la = {}
        for name, f in paths:
            la[name] = {}
            for _ in _largest(app, clock, f, HOLES, la[name]):
                yield
        res["largest_alloc"] = la
    import json
    print("MEMPROBE " + json.dumps(res))


if WASM:
    MPY32_PHASES = main()
else:
    for _ in main():
        gc.collect()
