"""Planned compute jobs -> load forecast in W per step (docs/tracker.md, "Queue file").

A job is {"id": str, "start": epoch s or None, "duration_s": int, "power_w": int,
"state": "queued" | "planned" | "running"}.
Sources: a JSON or CSV queue file, or Slurm's `squeue`. A job whose start is unknown
("queued", or Slurm N/A: start None) is assumed to start at forecast time + `queued_delay_s`
(default 0), every time the forecast is made: for storage the safe guess is that it may start
any moment, and it is never counted as already inside the measured load.
"""
import csv
import datetime
import io
import json
import os
import shutil
import subprocess
import time


class QueueError(ValueError):
    pass


def parse_time(v, now, field):
    """Epoch s from an int/float epoch, '+N' (N s after now), or ISO 8601 (naive = local)."""
    if isinstance(v, bool):
        raise QueueError("%s: %r is not a time" % (field, v))
    if isinstance(v, (int, float)):
        return int(v)
    s = str(v).strip()
    if s.startswith("+"):
        try:
            return now + int(s[1:])
        except ValueError:
            raise QueueError("%s: %r: '+N' needs N in whole seconds" % (field, v)) from None
    if s.isdigit():
        return int(s)
    try:
        return int(datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise QueueError("%s: %r is not epoch seconds, +N or ISO 8601" % (field, v)) from None


def _int(d, key, field, lo, dflt=None):
    v = d.get(key)
    if v is None or v == "":
        if dflt is not None:
            return dflt
        raise QueueError("%s: missing" % field)
    try:
        i = int(v)
        if isinstance(v, bool) or (isinstance(v, float) and v != i):
            raise ValueError
        if isinstance(v, str) and str(i) != v.strip():
            raise ValueError
    except (TypeError, ValueError):
        raise QueueError("%s: %r is not an integer" % (field, v)) from None
    if i < lo:
        raise QueueError("%s: %d below %d" % (field, i, lo))
    return i


def make_job(d, now, where="job", node_w=None):
    """Validate one raw job record (dict of JSON values or CSV strings)."""
    if not isinstance(d, dict):
        raise QueueError("%s: not an object" % where)
    jid = d.get("id")
    if jid is None or str(jid).strip() == "":
        raise QueueError("%s.id: missing" % where)
    jid = str(jid).strip()
    where = "%s (id %s)" % (where, jid)
    st = d.get("start", "queued")
    if st is None or str(st).strip().lower() in ("", "queued"):
        start, state = None, "queued"
    else:
        start, state = parse_time(st, now, where + ".start"), "planned"
    dur = _int(d, "duration_s", where + ".duration_s", 1)
    if d.get("power_w") not in (None, ""):
        pw = _int(d, "power_w", where + ".power_w", 0)
    else:
        nodes = _int(d, "nodes", where + ".nodes (or power_w)", 1)
        nw = _int(d, "node_w", where + ".node_w (or --node-w)", 0, node_w)
        pw = nodes * nw
    if start is not None and start <= now < start + dur:
        state = "running"
    return {"id": jid, "start": start, "duration_s": dur, "power_w": pw, "state": state}


def parse_json(text, now, node_w=None, name="queue"):
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise QueueError("%s: not JSON: %s" % (name, e)) from None
    if isinstance(doc, dict):
        doc = doc.get("jobs")
    if not isinstance(doc, list):
        raise QueueError("%s: need a list of jobs or {\"jobs\": [...]}" % name)
    return [make_job(j, now, "%s: jobs[%d]" % (name, i), node_w)
            for i, j in enumerate(doc)]


def parse_csv(text, now, node_w=None, name="queue"):
    rows = csv.DictReader(io.StringIO(text))
    if not rows.fieldnames or "id" not in [f.strip() for f in rows.fieldnames]:
        raise QueueError("%s: CSV needs a header row with id,start,duration_s,power_w "
                         "(or nodes,node_w)" % name)
    jobs = []
    for i, r in enumerate(rows):
        r = {(k or "").strip(): (v or "").strip() for k, v in r.items()}
        if not any(r.values()):
            continue
        jobs.append(make_job(r, now, "%s: line %d" % (name, i + 2), node_w))
    return jobs


def load(path, now=None, node_w=None):
    """Jobs from a .json or .csv queue file (format by extension, else by first character).
    '+N' starts are relative to `now`, the time the file is read."""
    now = int(time.time()) if now is None else now
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except OSError as e:
        raise QueueError("queue file %s: %s" % (path, e.strerror or e)) from None
    except UnicodeDecodeError as e:
        raise QueueError("queue file %s: not UTF-8 text (byte offset %d)" % (path, e.start)) \
            from None
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv" or (ext != ".json" and not text.lstrip().startswith(("[", "{"))):
        return parse_csv(text, now, node_w, name)
    return parse_json(text, now, node_w, name)


# ---- Slurm ------------------------------------------------------------------------------------

SQUEUE_FMT = "%i|%S|%L|%D|%T"   # job id | start (actual/expected) | time left | nodes | state
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "RESIZING", "REQUEUED", "SUSPENDED")


def slurm_duration_s(s):
    """Slurm time: [days-]hours:minutes:seconds, minutes:seconds, or minutes; None when
    UNLIMITED / NOT_SET / INVALID."""
    s = s.strip()
    if not s or not s[0].isdigit():
        return None
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        days = int(d)
        parts = [int(p) for p in s.split(":")]
        parts += [0] * (3 - len(parts))      # D-HH, D-HH:MM
        h, m, sec = parts
    else:
        parts = [int(p) for p in s.split(":")]
        if len(parts) == 3:
            h, m, sec = parts
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        else:
            h, m, sec = 0, parts[0], 0
    return ((days * 24 + h) * 60 + m) * 60 + sec


def parse_squeue(text, now, node_w, default_duration_s=3600):
    """Jobs from `squeue -h -o "%i|%S|%L|%D|%T"` output. Running jobs end at now + time left;
    pending ones start at the expected start (%S) or, when Slurm has none (N/A), are queued."""
    jobs = []
    for n, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        f = [x.strip() for x in line.split("|")]
        if len(f) != 5:
            raise QueueError("squeue line %d: %r: need 5 fields %s" % (n + 1, line, SQUEUE_FMT))
        jid, st, left, nodes, state = f
        state = state.upper()
        if state not in ACTIVE:
            continue
        try:
            dur = slurm_duration_s(left)
            nn = int(nodes)
        except ValueError:
            raise QueueError("squeue line %d: %r: bad time left or node count" % (n + 1, line)) from None
        if dur is None:
            dur = default_duration_s
        start = None
        if st and st[0].isdigit():
            start = parse_time(st, now, "squeue line %d start" % (n + 1))
        if state == "RUNNING":
            start = now if start is None else min(start, now)
            dur = max(now + dur - start, 1)
            kind = "running"
        elif start is None or start < now:
            start, kind = None, "queued"     # no estimate, or a stale one: may start any moment
        else:
            kind = "planned"
        if dur <= 0:
            continue
        jobs.append({"id": jid, "start": start, "duration_s": dur, "power_w": nn * node_w,
                     "state": kind})
    return jobs


def squeue_available():
    return shutil.which("squeue") is not None


def squeue(node_w, now=None, extra_args=(), default_duration_s=3600, timeout_s=20):
    """Run squeue and parse it; QueueError when it is missing or fails."""
    now = int(time.time()) if now is None else now
    if not squeue_available():
        raise QueueError("squeue: command not found (Slurm client not installed)")
    cmd = ["squeue", "-h", "-o", SQUEUE_FMT] + list(extra_args)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QueueError("squeue: %s" % e) from None
    if p.returncode != 0:
        raise QueueError("squeue: rc %d: %s" % (p.returncode, p.stderr.strip()))
    return parse_squeue(p.stdout, now, node_w, default_duration_s)


# ---- forecast ---------------------------------------------------------------------------------

def running_w(jobs, t):
    """W of the jobs that have started and run at instant t (queued ones never have)."""
    return sum(j["power_w"] for j in jobs
               if j["start"] is not None and j["start"] <= t < j["start"] + j["duration_s"])


def load_w(jobs, t0, step_s, n, queued_delay_s=0):
    """Planned job load per step: W averaged over [t0 + k*step_s, t0 + (k+1)*step_s), so a job
    starting mid-minute shows its energy share in that minute. Queued jobs start at
    t0 + queued_delay_s."""
    if step_s <= 0 or n < 0:
        raise QueueError("step_s/n: need step_s > 0 and n >= 0")
    out = []
    for k in range(n):
        a = t0 + k * step_s
        b = a + step_s
        ws = 0
        for j in jobs:
            st = t0 + queued_delay_s if j["start"] is None else j["start"]
            ov = min(b, st + j["duration_s"]) - max(a, st)
            if ov > 0:
                ws += j["power_w"] * ov
        out.append((ws + step_s // 2) // step_s)
    return out
