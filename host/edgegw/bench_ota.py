"""OTA figures (`make bench`, key "ota"; docs/ota.md): a full bundle into the virtual
gateway over a real mosquitto, offer to confirmed (real seconds, speed 10, including the
reset and the site-time trial), and the RAM one chunk costs on the 32-bit and the 64-bit
MicroPython: the bytes ota.Download.take allocates for a 4 KiB chunk on top of the payload
(the MQTT packet the link already holds), the largest over every chunk of the bundle,
with the collector off so nothing is freed in between (an upper bound of the peak). Also
the HMAC check of the offer on both runtimes.

    python -m edgegw.bench --only ota
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")
MPY32 = ["node", os.path.join(REPO, "tools", "mpy32.mjs")]
KEY = "00112233445566778899aabbccddeeff"
DEV = "gw-bench-ota"

# fed to MicroPython in the bundle's folder: offer.json and files/<path> beside it
_PROBE = r"""
import gc, json, os, time
from binascii import hexlify
from edgefw import ota, auth
from protocols import topics as T
offer = json.load(open("offer.json"))
cmd = json.load(open("cmd.json"))
d = ota.Download(offer, "a")
gc.collect()
gc.disable()
worst = 0
n = 0
for i, f in enumerate(offer["files"]):
    with open("files/" + f["path"], "rb") as fh:
        o = 0
        while True:
            data = fh.read(offer["chunk"])
            if not data and o > 0:
                break
            a0 = gc.mem_alloc()
            r = d.take(i, o, data)
            a = gc.mem_alloc() - a0
            n += 1
            if a > worst:
                worst = a
            o += len(data)
            if r == "file" or not data:
                break
    if n % 8 == 0:
        gc.enable(); gc.collect(); gc.disable()
gc.enable()
ok = d.complete()
key = auth.parse_key(KEY_HEX)
t0 = time.ticks_us()
for k in range(10):
    good = hexlify(auth.signature(key, DEVICE_ID, T.COMMANDS[T.OTA_OFFER], cmd)).decode() == cmd["sig"]
us = time.ticks_diff(time.ticks_us(), t0) // 10
print(json.dumps({"chunks": n, "alloc_per_chunk_max_b": worst, "complete": ok,
                  "hmac_ok": good, "hmac_us": us}))
"""


def _bundle(d, trial_s):
    from edgegw import cmd_ota
    path = os.path.join(d, "bundle.tar")
    cmd_ota.build(cmd_ota.bundle_files(), "bench", path, trial_s=trial_s)
    return path


def _ram(d, bundle):
    """The chunk path on the two MicroPython runtimes, from the real bundle."""
    from edgegw import cmd_ota, pairing
    from protocols import topics as T
    man, datas = cmd_ota.load(bundle)
    w = os.path.join(d, "ram")
    for f, data in zip(man["files"], datas):
        p = os.path.join(w, "files", f["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)
    cmd = pairing.command(bytes.fromhex(KEY), DEV, T.OTA_OFFER, dict(man), 1, int(time.time()),
                          86400)
    with open(os.path.join(w, "offer.json"), "w") as fh:
        json.dump(man, fh)
    with open(os.path.join(w, "cmd.json"), "w") as fh:
        json.dump(cmd, fh)
    with open(os.path.join(w, "probe.py"), "w") as fh:
        fh.write(_PROBE.replace("KEY_HEX", repr(KEY)).replace("DEVICE_ID", repr(DEV)))
    out = {}
    # the code is the bundle's own .mpy files: what the gateway would run
    path = os.path.join(w, "files")
    for name, argv in (("32bit", MPY32 + ["-X", "heapsize=2m", "--copy",
                                          "files,offer.json,cmd.json,probe.py"]),
                       ("64bit", [MICROPYTHON, "-X", "heapsize=2m"])):
        shutil.rmtree(os.path.join(w, "ota"), ignore_errors=True)
        p = subprocess.run(argv + ["probe.py"], cwd=w, capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, MICROPYPATH=path))
        lines = p.stdout.strip().splitlines()
        if p.returncode != 0 or not lines:
            out[name] = {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
            continue
        out[name] = json.loads(lines[-1])
    return out


def _end_to_end(d, bundle, trial_s):
    from edgegw import cmd_ota
    from edgegw.mosq import Mosquitto
    from edgegw.simsite import SimSite
    from edgegw.vgw import VirtualGateway, site_config
    man, datas = cmd_ota.load(bundle)
    with Mosquitto() as m:
        c = site_config(link={"host": m.host, "port": m.port, "key": KEY,
                              "telemetry_ms": 60000, "backoff_min_ms": 100,
                              "backoff_max_ms": 1000})
        c["device_id"] = DEV
        sim = SimSite(pv=3000, it=2200, aux=400, soc_cpct=6000)
        with VirtualGateway(os.path.join(d, "gw"), c, sim, speed=10) as gw:
            gw.wait(lambda s: (s["link"] or {}).get("connected"), 60, points=False)
            srv = cmd_ota.Server("%s:%d" % (m.host, m.port), man, datas, [DEV])
            try:
                t0 = time.time()
                cmd = srv.offer(DEV, bytes.fromhex(KEY), int(time.time()), 86400)
                res = cmd_ota._wait_trial(srv, DEV, cmd, 300, lambda s: None)
                dt = time.time() - t0
            finally:
                srv.close()
    return {"result": res, "offer_to_confirmed_s": round(dt, 2), "trial_site_s": trial_s,
            "files": len(man["files"]), "bytes": sum(f["size"] for f in man["files"]),
            "chunk_b": man["chunk"]}


def run(small=False):  # small: the same run (about 15 s); the figures need it whole
    d = tempfile.mkdtemp(prefix="edgegw-bench-ota-")
    try:
        trial_s = 10
        bundle = _bundle(d, trial_s)
        res = {"full_bundle": _end_to_end(d, bundle, trial_s), "chunk_ram": _ram(d, bundle),
               "note": "virtual gateway on this host at speed 10; RAM = bytes allocated by "
                       "ota.Download.take per 4 KiB chunk beyond the payload, collector off"}
        bad = [k for k, v in res["chunk_ram"].items() if "error" in v or not v["hmac_ok"]]
        if res["full_bundle"]["result"] != "confirmed" or bad:
            raise RuntimeError("ota bench: %s, chunk path %s" % (res["full_bundle"]["result"],
                                                                 bad or "ok"))
        return res
    finally:
        shutil.rmtree(d, ignore_errors=True)
