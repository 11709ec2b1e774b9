# Firmware update over the link (docs/ota.md). A signed offer (the link checks it like
# every command: HMAC, seq, expiry) names a version and its files with size and sha256;
# the gateway pulls the files chunk by chunk (ota/want -> ota/chunk, at most 4 KiB each,
# written straight to the file: no bundle in RAM) into the slot that is not running,
# checks every file's sha256, writes the slot's manifest and then the boot record
# (otarec.py: the atomic switch) and resets into the new slot on trial. The trial
# confirms after trial_s with no loop error, every bus healthy and the link up; else
# the gateway rolls back and resets. Progress (the offer, the files verified) is kept
# in ota/offer.json, so a restart resumes at the byte it had written.
import json
import os

from binascii import hexlify

from edgefw import clock, hal, otarec, store
from protocols import topics as T

OFFER = "ota/offer.json"
RETRY_MS = 3000     # no chunk for this long: ask again (lost message, host restarted)
RESET_MS = 1500     # after the switch: time for the events to go out


def mkdirs(path):
    p = ""
    for part in path.split("/"):
        p = part if not p else p + "/" + part
        try:
            os.mkdir(p)
        except OSError:
            pass


def rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        q = path + "/" + n
        try:
            os.remove(q)
        except OSError:
            rmtree(q)
            try:
                os.rmdir(q)
            except OSError:
                pass


def size_of(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def file_sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        store.pieces(f, h.update)
    return hexlify(h.digest()).decode()


class Download:
    """Bookkeeping of one offer into one slot folder: which file and offset comes next.
    Pure apart from the files it writes (the dual tests run it in a temp folder)."""

    def __init__(self, offer, slot, done=0):
        self.offer = offer
        self.slot = slot
        self.dir = otarec.slot_dir(slot)
        self.files = offer["files"]
        self.f = done          # files verified
        self.o = 0             # bytes of file f written
        if done < len(self.files):
            n = size_of(self.path(done))
            self.o = n if 0 <= n <= self.files[done]["size"] else 0
            if n > self.files[done]["size"]:
                os.remove(self.path(done))

    def path(self, i):
        return self.dir + "/" + self.files[i]["path"]

    def complete(self):
        return self.f >= len(self.files)

    def want(self):
        return {"version": self.offer["version"], "f": self.f, "o": self.o}

    def take(self, f, o, data):
        """Write a chunk; returns None (taken, or not the one wanted: ignored), "file" when
        a file completed and verified, or an error text (the file starts over)."""
        if f != self.f or o != self.o or self.complete():
            return None  # a duplicate or a late answer to an older request
        e = self.files[f]
        n = len(data)
        if n == 0 and o < e["size"] or o + n > e["size"]:
            return "file %d: chunk at %d of %d bytes does not fit size %d" % (f, o, n, e["size"])
        p = self.path(f)
        if o == 0:
            i = p.rfind("/")
            if i > 0:
                mkdirs(p[:i])
        with open(p, "wb" if o == 0 else "ab") as fh:
            fh.write(data)
        self.o = o + n
        if self.o < e["size"]:
            return None
        if file_sha256(p) != e["sha256"]:
            os.remove(p)
            self.o = 0
            return "file %s: sha256 mismatch (downloading it again)" % e["path"]
        self.f += 1
        self.o = 0
        return "file"


class Ota:
    def __init__(self, link, health, buses, running=None):
        self.link = link
        self.health = health
        self.buses = buses
        self.rec = otarec.read()
        self.running = running if running is not None else self._running()
        self.dl = None
        self.asked = None
        self.reset_at = None
        self.step = "idle"
        self.trial_due = None
        self.n_chunks = 0
        self.last = None       # the last step, published retained on ota/status
        r = self.rec
        if r is not None and r.get("failed") and not r.get("told"):
            # otaboot went back (a failed trial, a slot that did not start): say so once
            n = dict(r)
            n["told"] = True
            otarec.write(n)
            self.rec = n
            self.step = "rolled_back"
            self._event("rolled_back", {"failed": r["failed"], "why": r.get("why")})
        if r is not None and r.get("trial") and r.get("active") == self.running:
            self.trial_due = clock.ticks_add(clock.site_ms(), r.get("trial_s", 600) * 1000)
            self.step = "trial"
        self._resume()

    def _running(self):
        try:
            import otaboot
            return otaboot.chosen
        except ImportError:
            return otarec.BASE

    def _resume(self):
        exists, body = store.read_checked(OFFER)
        if body is None:
            return
        try:
            st = json.loads(body)
            errs = T.check_ota_offer(st["offer"])
            if errs or st["slot"] == self.running:
                raise ValueError(errs)
            self.dl = Download(st["offer"], st["slot"], st["done"])
            self.step = "resumed"
            self._event("resumed", {"f": self.dl.f, "o": self.dl.o})
        except Exception as e:
            self.health.err("ota: progress file dropped: %r" % (e,))
            self.dl = None

    # ---- from the link ----------------------------------------------------------------

    def offer(self, cmd):
        """A verified offer (link: signature, seq, expiry, check_ota_offer done)."""
        o = {}
        for k in ("version", "files", "chunk", "trial_s"):
            o[k] = cmd[k]
        if self.rec is not None and self.rec.get("version") == o["version"] \
                and self.rec.get("active") == self.running:
            self._event("already", {})
            return
        if self.step == "trial" or self.reset_at is not None:
            self._event("busy", {"why": self.step})
            return
        slot = otarec.inactive(self.running)
        rmtree(otarec.slot_dir(slot))  # the old contents (its manifest first gone)
        mkdirs(otarec.slot_dir(slot))
        self.dl = Download(o, slot)
        self._save()
        self.step = "downloading"
        self._event("offered", {"slot": slot, "files": len(o["files"])})
        self._ask()

    def chunk(self, payload):
        d = self.dl
        if d is None:
            return
        try:
            ver, f, o, data = T.parse_ota_chunk(payload)
        except ValueError as e:
            self.health.err("ota: %s" % e)
            self._event("bad_chunk", {"why": str(e)})
            return
        if ver != d.offer["version"]:
            return
        at = d.o
        r = d.take(f, o, data)
        if r is None:
            if d.o != at:  # taken (a duplicate or late one is dropped: no second ask)
                self.n_chunks += 1
                self._ask()
            return
        self.n_chunks += 1
        if r != "file":
            self._event("bad_file", {"why": r})
        else:
            self._save()
            self._event("progress", {"files": d.f, "of": len(d.files)})
        if d.complete():
            self._switch()
        else:
            self._ask()

    # ---- the pass -----------------------------------------------------------------------

    def poll(self, now):
        if self.last is not None and self.link.connected:
            self.link.client.publish(T.topic(self.link.device_id, T.OTA_STATUS),
                                     json.dumps(self.last), 1, True)
            self.last = None
        if self.reset_at is not None:
            if clock.ticks_diff(now, self.reset_at) >= 0:
                hal.reset()
            return
        if self.dl is not None and self.link.connected:
            if self.asked is None or clock.ticks_diff(now, self.asked) >= RETRY_MS:
                self._ask()
        if self.trial_due is not None and clock.ticks_diff(now, self.trial_due) >= 0:
            self._trial_end(now)

    def _trial_end(self, now):
        h = self.health
        why = None
        if h.nloop_err or h.npass_err:
            # a part that raises every pass (control, PCS) is caught per pass, so the loop
            # itself runs on: its errors fail the trial too
            why = "%d loop errors" % (h.nloop_err + h.npass_err)
        elif not self.buses.healthy():
            why = "buses not healthy"
        elif not self.link.connected:
            why = "link not back"
        self.trial_due = None
        r = self.rec
        if why is None:
            n = dict(r)
            n["trial"] = False
            n["tries"] = 0
            otarec.write(n)
            self.rec = n
            self.step = "confirmed"
            self._event("confirmed", {})
            return
        otarec.write(otarec.failed(r, why))
        self.step = "trial_failed"
        self._event("trial_failed", {"why": why})  # "rolled_back" follows after the reset
        self.reset_at = clock.ticks_add(now, RESET_MS)

    # ---- steps ---------------------------------------------------------------------------

    def _switch(self):
        d = self.dl
        m = {"version": d.offer["version"], "files": d.files}
        store.write_atomic(d.dir + "/manifest.json", store.seal(json.dumps(m)))
        prev = self.running
        r = {"active": d.slot, "prev": prev, "trial": True, "tries": 0,
             "version": d.offer["version"], "trial_s": d.offer["trial_s"],
             "prev_version": None if self.rec is None else self.rec.get("version")}
        otarec.write(r)  # the switch: one atomic rename
        try:
            os.remove(OFFER)
        except OSError:
            pass
        self.dl = None
        self.step = "switched"
        self._event("switched", {"slot": d.slot, "prev": prev})
        self.reset_at = clock.ticks_add(clock.site_ms(), RESET_MS)

    def _save(self):
        d = self.dl
        store.write_atomic(OFFER, store.seal(json.dumps(
            {"offer": d.offer, "slot": d.slot, "done": d.f})))

    def _ask(self):
        self.asked = clock.site_ms()
        c = self.link.client
        if c is not None and self.link.connected and self.dl is not None:
            c.publish(T.topic(self.link.device_id, T.OTA_WANT), json.dumps(self.dl.want()), 1)

    def _event(self, step, data):
        d = dict(data)
        d["step"] = step
        d["running"] = self.running
        d["version"] = self.version(step)
        self.health.event("ota", d)
        self.last = d

    def version(self, step=None):
        if self.dl is not None:
            return self.dl.offer["version"]
        r = self.rec
        return None if r is None else r.get("version")

    def status(self):
        s = {"step": self.step, "running": self.running, "version": self.version()}
        if self.dl is not None:
            s["f"] = self.dl.f
            s["o"] = self.dl.o
        return s
