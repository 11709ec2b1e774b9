# Golden-vector replay, shared by tests/dual/test_dispatch.py (both runtimes) and
# `edgegw dispatch golden` (writes golden_dispatch.txt): the firmware dispatch in a closed
# loop with an integer battery plant over the bundled scenarios, the tracker's compute
# forecast every 15 min and the site's cloud schedule. Every output (setpoint, curtailment,
# reason) goes into a SHA-256 per block of BLOCK steps, so a file of a few kB pins
# > 10,000 steps bit for bit and a mismatch names the first block that differs.
import hashlib
import json

from edgefw import dispatch

SCENARIOS = ("sandstorm", "clear_summer", "clouds", "winter", "night_burst", "peak_shaving",
             "load_drop", "mixed_3day")
BLOCK = 240
FC_STEP = 300
FC_N = 72           # 6 h of 5 min points
FC_EVERY = 900


def load(root, name):
    with open("%s/%s.json" % (root, name)) as f:
        p = dispatch.validate_params(json.load(f))
    t, pv, it, aux = [], [], [], []
    with open("%s/%s.csv" % (root, name)) as f:
        f.readline()
        for line in f:
            v = line.strip().split(",")
            if len(v) < 4:
                continue
            t.append(int(v[0]))
            pv.append(int(v[1]))
            it.append(int(v[2]))
            aux.append(int(v[3]))
    return p, t, pv, it, aux


def _forecast(it, i):
    out = []
    for j in range(FC_N):
        a = i + j * 5
        if a >= len(it):
            break
        seg = it[a:a + 5]
        out.append(sum(seg) // len(seg))
    return out


def replay(root, name, steps=None):
    """-> list of (block index, steps in block, sum sp, sum curtail, sha256 hex)."""
    p, t, pv, it, aux = load(root, name)
    d = dispatch.Dispatcher(p)
    if "schedule" in p:
        d.set_schedule(p["schedule"])
    cmax = min(p["charge_max_w"], p["pcs_w"])
    dmax = min(p["discharge_max_w"], p["pcs_w"])
    etac = p["eta_c_milli"]
    etad = p["eta_d_milli"]
    cap = p["battery_wh"] * 3600            # W*s (plant side: plain ints, all >= 0)
    e = cap * p["soc_init_cpct"] // 10000
    n = len(t) if steps is None else min(steps, len(t))
    bat = 0
    curt = 0
    out = []
    h = hashlib.sha256()
    ssp = scu = k = 0
    for i in range(n):
        if (t[i] - t[0]) % FC_EVERY == 0:
            fc = _forecast(it, i)
            if fc:
                d.set_forecast(t[i], FC_STEP, fc, t[i] + 2 * FC_EVERY)
        soc = e * 10000 // cap
        g = it[i] + aux[i] - (pv[i] - curt) - bat
        sp = d.step(t[i], pv[i], it[i], aux[i], g, soc, cmax if soc < 10000 else 0,
                    dmax if soc > 0 else 0)
        curt = d.curtail_w
        h.update(("%d,%d,%s;" % (sp, curt, d.reason)).encode())
        ssp += sp
        scu += curt
        k += 1
        # integer plant, 60 s steps
        if sp > 0:
            bat = min(sp, dmax, e * etad // 60000)
            e -= bat * 60000 // etad
        elif sp < 0:
            c = min(-sp, cmax, (cap - e) * 1000 // (etac * 60))
            e += c * etac * 60 // 1000
            bat = -c
        else:
            bat = 0
        if e < 0:
            e = 0
        if k == BLOCK or i == n - 1:
            out.append((len(out), k, ssp, scu, _hex(h.digest())))
            h = hashlib.sha256()
            ssp = scu = k = 0
    return out


def _hex(b):
    return "".join("%02x" % x for x in b)


def read(path):
    """Golden file -> {name: [(block, steps, sum_sp, sum_curt, hex), ...]}."""
    g = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            v = line.split()
            g.setdefault(v[0], []).append((int(v[1]), int(v[2]), int(v[3]), int(v[4]), v[5]))
    return g
