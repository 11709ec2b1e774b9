# The OTA boot record (docs/ota.md): which firmware slot boots, whether it is on trial and
# what to go back to. One small sealed file, ota/boot.json, written with store.write_atomic,
# so a power cut at any byte leaves the old record or the new one (a torn one fails its
# CRC and reads as "no record": the base firmware boots). Pure: no I/O beyond that file,
# used by otaboot.py at boot (before any other edgefw module) and by ota.py.
import json

from edgefw import store

DIR = "ota"
REC = "ota/boot.json"
BASE = "base"          # the firmware flashed on the board (frozen / root files)
SLOTS = ("a", "b")
TRIES = 1              # boots a new slot gets on trial; one more before confirm = failed


def slot_dir(slot):
    return "%s/%s" % (DIR, slot)


def inactive(active):
    """The slot a download goes to: never the one running."""
    return "b" if active == "a" else "a"


def parse(body):
    """The record dict from a sealed file's body, or None when it is not a valid one."""
    try:
        r = json.loads(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(r, dict) or r.get("active") not in SLOTS + (BASE,) \
            or r.get("prev", BASE) not in SLOTS + (BASE,) \
            or not isinstance(r.get("trial", False), bool) \
            or not isinstance(r.get("tries", 0), int):
        return None
    return r


def read(path=REC):
    exists, body = store.read_checked(path)
    return None if body is None else parse(body)


def write(r, path=REC):
    store.write_atomic(path, store.seal(json.dumps(r)))


def decide(r, slot_ok):
    """(slot to boot, record to write first or None) for record r (None = no record).
    slot_ok(slot): that slot holds a complete, verified firmware (its manifest).
    A slot on trial gets TRIES boots; booted again before the trial confirmed it (a
    crash, a watchdog, a power cut, the trial's own rollback) it has failed: the
    previous slot boots and the record says why."""
    if r is None:
        return BASE, None
    act = r["active"]
    prev = r.get("prev", BASE)
    if act != BASE and not slot_ok(act):
        return _back(r, prev, "slot %s incomplete" % act)
    if r.get("trial"):
        if r.get("tries", 0) >= TRIES:
            return _back(r, prev, r.get("why") or "restarted during its trial")
        n = dict(r)
        n["tries"] = r.get("tries", 0) + 1
        return act, n
    return act, None


def _back(r, prev, why):
    if prev != BASE and not (prev in SLOTS):
        prev = BASE
    n = {"active": prev, "prev": BASE, "trial": False, "tries": 0,
         "version": r.get("prev_version"), "failed": r.get("version"), "why": why}
    return prev, n


def failed(r, why):
    """The record that sends a failed trial back (ota.py writes it, then resets)."""
    n = dict(r)
    n["tries"] = TRIES
    n["why"] = why
    return n
