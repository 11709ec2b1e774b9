# Command signing: HMAC-SHA256 (RFC 2104, written out because MicroPython has no hmac
# module) over a canonical text of the command, and the gateway-side verifier that
# rejects unsigned, forged, stale and replayed commands. Spec: docs/mqtt.md "Signing".
import hashlib
import json
from binascii import hexlify, unhexlify

from edgefw import clock
from edgefw import store

_BLOCK = 64  # SHA-256 block size

# rejection reasons (also the "reason" field of the ack)
OK = "ok"
MALFORMED = "malformed"
UNSIGNED = "unsigned"
BAD_SIG = "bad_sig"
STALE = "stale"
REPLAYED = "replayed"
NO_KEY = "no_key"
TOO_OLD = "too_old"    # no trusted seq record and ts before this boot (see Verifier)
NO_CLOCK = "no_clock"  # no trusted seq record and the wall clock is not set yet


def _pads(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac_sha256(key, msg):
    ipad, opad = _pads(key)
    h = hashlib.sha256(ipad)
    h.update(msg)
    return _outer(opad, h)


def _outer(opad, inner):
    h = hashlib.sha256(opad)
    h.update(inner.digest())
    return h.digest()


class _Feed:
    """Writer for _canon that hashes the text as it comes, in pieces of at most about
    256 bytes: a command's canonical text (a forecast's 240 points: ~2 KB, its piece
    list 8 KB on 64-bit) is never built whole on the gateway."""

    def __init__(self, h):
        self.h = h
        self.parts = []
        self.n = 0

    def append(self, s):
        self.parts.append(s)
        self.n += len(s)
        if self.n >= 256:
            self.flush()

    def flush(self):
        if self.parts:
            self.h.update("".join(self.parts).encode())
            del self.parts[:]  # keeps the list's small allocation
            self.n = 0


def _canon(v, out, skip=None):
    # JSON with sorted keys and no spaces; text limited to printable ASCII so that
    # CPython and MicroPython produce the same bytes without relying on json.dumps options
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, str):
        for c in v:
            if not (" " <= c <= "~"):
                raise ValueError("text %r: only printable ASCII can be signed" % v)
        out.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i in range(len(v)):
            if i:
                out.append(",")
            _canon(v[i], out)
        out.append("]")
    elif isinstance(v, dict):
        out.append("{")
        first = True
        for k in sorted(v):
            if k == skip:
                continue
            if not isinstance(k, str):
                raise ValueError("key %r is not text" % (k,))
            if not first:
                out.append(",")
            first = False
            _canon(k, out)
            out.append(":")
            _canon(v[k], out)
        out.append("}")
    else:
        raise ValueError("%r cannot be signed (integers, text, lists, objects only)" % (v,))


def _head(device_id, kind, cmd):
    return "edgegw1|%s|%s|%d|%d|" % (device_id, kind, cmd["seq"], cmd["exp"])


def canonical(device_id, kind, cmd):
    """Bytes that are signed: version, device, command kind, seq, exp and the whole
    command minus "sig". Device and kind inside stop a command signed for one gateway
    or topic from being replayed to another."""
    out = [_head(device_id, kind, cmd)]
    _canon(cmd, out, "sig")
    return "".join(out).encode()


def signature(key, device_id, kind, cmd):
    """hmac_sha256(key, canonical(...)) without building the canonical text: hashed in
    pieces as _canon makes them (bounded allocations on the gateway)."""
    ipad, opad = _pads(key)
    h = hashlib.sha256(ipad)
    f = _Feed(h)
    f.append(_head(device_id, kind, cmd))
    _canon(cmd, f, "sig")
    f.flush()
    return _outer(opad, h)


def parse_key(hexkey):
    """Config key text -> bytes; ValueError naming the problem."""
    if not isinstance(hexkey, str) or len(hexkey) < 32 or len(hexkey) % 2:
        raise ValueError("key must be an even number of hex digits, at least 32 (16 bytes)")
    try:
        return unhexlify(hexkey)
    except ValueError:
        raise ValueError("key is not hex")


def sign(key, device_id, kind, cmd):
    """Adds "sig" to cmd (a dict with seq and exp); returns cmd."""
    cmd.pop("sig", None)
    cmd["sig"] = hexlify(hmac_sha256(key, canonical(device_id, kind, cmd))).decode()
    return cmd


def _same(a, b):
    # compare without an early exit so timing does not leak how much of a guess matched
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= ord(a[i]) ^ ord(b[i])
    return d == 0


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# Replay protection fails closed: without a trusted record of the seqs already used (fresh
# device, files wiped, a slot torn or corrupt) only commands made after this boot pass.
SKEW_S = 120           # allowed clock difference sender vs gateway for that floor


def _read_slot(name):
    """(exists, record or None): a record is {"n", "floor", "last"} with a good CRC."""
    exists, body = store.read_checked(name)
    if body is None:
        return exists, None
    try:
        r = json.loads(body)
        last = {}
        for k in r["last"]:
            if _is_int(r["last"][k]):
                last[k] = r["last"][k]
        fl = r.get("floor")
        if not _is_int(r["n"]) or not (fl is None or _is_int(fl)):
            return True, None
        return True, (r["n"], fl, last)
    except (ValueError, KeyError, TypeError, AttributeError):
        return True, None


class Verifier:
    """Checks signed commands for one device. The last accepted seq of each command kind
    (setpoints come from the cloud, forecasts from the tracker: separate counters) is kept
    in two slot files `path`.0 / `path`.1 with a CRC, written alternately (one small write
    per accepted command), so a reboot reopens no replays and a torn write falls back to
    the other slot. Fails closed: when no slot is valid, or one is torn/corrupt, commands
    also need ts >= `floor` = the boot time - SKEW_S (kept in the record from then on), so
    commands captured before this boot cannot be replayed. path=None: in RAM only, no floor.
    boot_s: the wall clock at boot (default clock.time() now)."""

    def __init__(self, key, device_id, path=None, boot_s=None):
        self.key = key
        self.device_id = device_id
        self.path = path
        self.last = {}      # kind -> last accepted seq
        self.floor = None   # commands need ts >= floor (None = no floor)
        self.n = 0          # record writes; the next goes to slot (n + 1) & 1
        self.recovered = "ram"
        self._pending = False  # floor wanted but the clock was not set at boot
        if not path:
            return
        if boot_s is None:
            boot_s = clock.time()
        self._t0 = clock.site_ms()
        s0 = _read_slot(path + ".0")
        s1 = _read_slot(path + ".1")
        best, other = (s0, s1) if s0[1] is not None and (s1[1] is None or s0[1][0] > s1[1][0]) \
            else (s1, s0)
        if best[1] is not None:
            self.n, self.floor, self.last = best[1]
            self.recovered = "slot"
            # the other slot should hold the previous record: if it is torn or corrupt (or
            # gone once both were written) the newest state may be lost too
            if other[1] is None and (other[0] or self.n >= 2):
                self.recovered = "slot, other slot bad"
                self._set_floor(boot_s)
            return
        self.recovered = "none"
        self._set_floor(boot_s)
        try:  # the one-file format of older firmware: its seqs still count
            with open(path) as f:
                d = json.loads(f.read())
            for k in d:
                if _is_int(d[k]):
                    self.last[k] = d[k]
            self.recovered = "legacy"
        except (OSError, ValueError, TypeError):
            pass

    def _set_floor(self, boot_s):
        if not clock.valid(boot_s):
            self._pending = True  # set at the first check with a set clock
            return
        f = boot_s - SKEW_S
        if self.floor is None or f > self.floor:
            self.floor = f

    def last_seq(self, kind):
        return self.last.get(kind, -1)

    def check(self, kind, cmd, now_s):
        """Reason string: OK or why cmd is rejected. Does not consume the seq."""
        if not isinstance(cmd, dict) or not _is_int(cmd.get("seq")) \
                or not _is_int(cmd.get("exp")) or not _is_int(cmd.get("ts")) or cmd["seq"] < 0:
            return MALFORMED
        sig = cmd.get("sig")
        if not sig:
            return UNSIGNED
        if self.key is None:
            return NO_KEY
        if not isinstance(sig, str):
            return BAD_SIG
        try:
            want = hexlify(signature(self.key, self.device_id, kind, cmd)).decode()
        except ValueError:
            return MALFORMED
        if not _same(sig.lower(), want):
            return BAD_SIG
        if cmd["exp"] <= now_s or cmd["exp"] <= cmd["ts"]:
            return STALE  # expired here, or by the sender's own clock (exp not after ts)
        if cmd["seq"] <= self.last.get(kind, -1):
            return REPLAYED
        if self._pending:
            if not clock.valid(now_s):
                return NO_CLOCK  # cannot tell a fresh command from a captured one
            # the clock was set after boot: the boot time is now - uptime
            up = clock.ticks_diff(clock.site_ms(), self._t0) // 1000
            self._pending = False
            self._set_floor(now_s - (up if up > 0 else 0))
        if self.floor is not None and cmd["ts"] < self.floor:
            return TOO_OLD
        return OK

    def accept(self, kind, cmd):
        """Record cmd's seq as used (after the command was also found valid)."""
        self.last[kind] = cmd["seq"]
        if self.path:
            self.n += 1
            store.write_atomic("%s.%d" % (self.path, self.n & 1),
                               store.seal(json.dumps({"n": self.n, "floor": self.floor,
                                                      "last": self.last})))
