"""Bench (`make bench`): the shared protocol code on both runtimes. CRC throughput (bytes/s),
codec encode+decode of request/response pairs per second, stream framer throughput on a
synthetic capture (Framer by gaps, split_stream by predicted lengths; pymodbus's RTU framer on
the same bytes for the ratio), register-map decodes per second, and on MicroPython the heap the
maps and a decode take. The MicroPython half runs as a subprocess of the unix port."""
import json
import os
import subprocess
import time

from protocols import modbus_rtu as rtu
from protocols import regmap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")

# The same workload on both runtimes (runs in CPython via exec, in MicroPython via -c).
WORK = r"""
import time, gc
from protocols import modbus_rtu as rtu
from protocols import regmap

try:
    ticks = time.ticks_us
    diff = time.ticks_diff
except AttributeError:
    ticks = lambda: time.perf_counter_ns() // 1000
    diff = lambda a, b: a - b


def rate(n, us):
    return int(n * 1000000 // max(us, 1))


def capture(pairs):
    # alternating FC04 requests and responses with register data; and per-frame times at 9600
    times = []
    t = 0
    s = 1
    for i in range(pairs):
        q = 2 + (i * 7) % 40
        req = rtu.encode_request(1 + i % 8, 4, (i * 13) & 0x3FFF, q)
        rsp = rtu.encode_response(1 + i % 8, 4, [(s * (k + 1)) & 0xFFFF for k in range(q)])
        s = (s * 1103 + 12345) & 0xFFFF
        for f in (req, rsp):
            t += len(f) * 1146 + 20000
            times.append((f, t))
    return b"".join([f for f, t in times]), times


def run(pairs, crc_bytes, codec_n, regmap_n):
    res = {}
    buf = bytes((i * 31 + 7) & 0xFF for i in range(256))
    n = crc_bytes // 256
    t0 = ticks()
    for _ in range(n):
        rtu.crc16_py(buf)
    res["crc_py_bytes_s"] = rate(n * 256, diff(ticks(), t0))
    t0 = ticks()
    for _ in range(n):
        rtu.crc16(buf)
    res["crc_bytes_s"] = rate(n * 256, diff(ticks(), t0))

    vals = list(range(100, 120))
    t0 = ticks()
    for i in range(codec_n):
        f = rtu.encode_request(1, 3, i & 0xFFF, 20)
        req = rtu.decode_request(f)
        r = rtu.encode_response(1, 3, vals)
        rtu.decode_response(r, req)
    res["codec_pairs_s"] = rate(codec_n, diff(ticks(), t0))

    data, times = capture(pairs)
    res["capture_bytes"] = len(data)
    res["capture_frames"] = 2 * pairs
    t0 = ticks()
    k = 0
    for f, kind in rtu.split_stream(data):
        k += 1
    us = diff(ticks(), t0)
    res["split_stream_frames_s"] = rate(k, us)
    res["split_stream_bytes_s"] = rate(len(data), us)
    fr = rtu.Framer(9600)
    t0 = ticks()
    k = 0
    for f, t in times:
        k += len(fr.feed(f, t))
    k += len(fr.flush())
    us = diff(ticks(), t0)
    res["framer_frames_s"] = rate(k, us)
    res["framer_frames"] = k

    m = regmap.load("seplos_v3")
    words = [0x14CD, 0xFF77, 0x6B40, 0x80E8, 0x0122, 0x0340, 0x03E7, 0x000A, 0x0CFF, 0x0B7F,
             0x0D00, 0x0CFF, 0x0B81, 0x0B7E, 0, 0x00B4, 0x00B4]
    t0 = ticks()
    for _ in range(regmap_n):
        regmap.decode(m, 4, 0x1000, words)
    res["regmap_seplos_block_decodes_s"] = rate(regmap_n, diff(ticks(), t0))
    m = regmap.load("sdm630")
    w76 = []
    for i in range(38):
        hi, lo = regmap.scaled_to_f32(23012 + i * 17, 100)
        w76.append(hi)
        w76.append(lo)
    t0 = ticks()
    for _ in range(regmap_n):
        regmap.decode(m, 4, 0, w76)
    res["regmap_sdm630_f32_block_decodes_s"] = rate(regmap_n, diff(ticks(), t0))

    if hasattr(gc, "mem_alloc"):
        gc.collect()
        a0 = gc.mem_alloc()
        maps = [regmap.load(n) for n in ("sdm630", "sdm120", "dtsu666", "dtsd1352",
                                           "seplos_v3", "sunspec_pcs", "sungrow_sh")]
        for x in maps:
            regmap.plan(x)
        gc.collect()
        res["heap_all_7_maps_b"] = gc.mem_alloc() - a0
        one = {}
        for x in maps:
            gc.collect()
            b0 = gc.mem_alloc()
            y = regmap.load(x.name)
            regmap.plan(y)
            gc.collect()
            one[x.name] = gc.mem_alloc() - b0
            y = None
        res["heap_per_map_b"] = one
        gc.collect()
        b0 = gc.mem_alloc()
        v = regmap.decode(m, 4, 0, w76)
        res["heap_sdm630_decode_result_b"] = gc.mem_alloc() - b0
    return res
"""

PAIRS = 100000
CRC_BYTES = 2000000
CODEC_N = 50000
REGMAP_N = 20000


def _cpython(div=1):
    ns = {}
    exec(compile(WORK, "bench_protocols_work", "exec"), ns)
    return (ns["run"](PAIRS // div, CRC_BYTES // div, CODEC_N // div, REGMAP_N // div),
            ns["capture"])


def _pymodbus_framer(frames):
    """Frames/s of pymodbus's RTU framer + PDU decoder (client side: responses). Its framer
    consumes the whole buffer for one frame, so it gets one frame per call, as a serial read
    delivers them."""
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU
    fr = FramerRTU(DecodePDU(False))
    t0 = time.perf_counter()
    k = 0
    for f in frames:
        used, pdu = fr.handleFrame(f, 0, 0)
        k += pdu is not None
    return k, time.perf_counter() - t0


def _ours_frames(frames):
    t0 = time.perf_counter()
    k = 0
    for f in frames:
        rtu.decode_response(f)
        k += 1
    return k, time.perf_counter() - t0


def _ours_stream(data):
    t0 = time.perf_counter()
    k = 0
    for f, kind in rtu.split_stream(data, is_request_first=False):
        rtu.decode_response(f)
        k += 1
    return k, time.perf_counter() - t0


def _micropython(div=1):
    if not os.path.exists(MICROPYTHON):
        return {"error": "no micropython at %s" % MICROPYTHON}
    # smaller counts: the unix port is ~10x slower; rates are per second either way
    code = WORK + "\nimport json\nprint(json.dumps(run(%d, %d, %d, %d)))\n" % (
        PAIRS // 20 // div, CRC_BYTES // 10 // div, CODEC_N // 10 // div, REGMAP_N // 10 // div)
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (REPO, os.path.join(REPO, "firmware")))
    # a modest heap: a huge one makes every collection sweep it and skews the rates
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=8m", "-c", code], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    if p.returncode:
        return {"error": (p.stdout + p.stderr)[-500:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(small=False):
    """small: 1/100 of the work (make test's smoke run; figures meaningless)."""
    div = 100 if small else 1
    cp, capture = _cpython(div)
    out = {"cpython": cp}
    # pymodbus's framer vs ours on the same response frames (what a master's framer sees),
    # each decoded to register values by both
    # 1,000,000 response frames (EDGEGW_BENCH_FRAMES to change it)
    nf = 2000 if small else int(os.environ.get("EDGEGW_BENCH_FRAMES", "1000000"))
    frames = [f for f, t in capture(nf)[1][1::2]]
    k0, s0 = _ours_frames(frames)
    k1, s1 = _ours_stream(b"".join(frames))
    try:
        k2, s2 = _pymodbus_framer(frames)
        out["pymodbus_compare"] = {
            "frames": len(frames), "ours_frames_s": int(k0 / s0), "ours_stream_frames_s": int(k1 / s1),
            "pymodbus_frames_s": int(k2 / s2), "pymodbus_frames": k2,
            "ratio_ours_over_pymodbus": round((k0 / s0) / (k2 / s2), 2),
            "ratio_ours_stream_over_pymodbus": round((k1 / s1) / (k2 / s2), 2),
            "target_ratio": 5}
    except ImportError:
        out["pymodbus_compare"] = {"error": "pymodbus not installed"}
    out["micropython"] = _micropython(div)
    # a day of 9600-baud traffic is ~ 9600/11 B/s x 86400 s = 75 MB
    bps = cp["split_stream_bytes_s"]
    out["cpython_day_at_9600_s"] = round(75e6 / bps, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, sort_keys=True))
