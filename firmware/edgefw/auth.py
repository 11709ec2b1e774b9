# Command signing: HMAC-SHA256 (RFC 2104, written out because MicroPython has no hmac
# module) over a canonical text of the command, and the gateway-side verifier that
# rejects unsigned, forged, stale and replayed commands. Spec: docs/mqtt.md "Signing".
import hashlib
import json
import os
from binascii import hexlify, unhexlify

_BLOCK = 64  # SHA-256 block size

# rejection reasons (also the "reason" field of the ack)
OK = "ok"
MALFORMED = "malformed"
UNSIGNED = "unsigned"
BAD_SIG = "bad_sig"
STALE = "stale"
REPLAYED = "replayed"
NO_KEY = "no_key"


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    h = hashlib.sha256(ipad)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(opad)
    h.update(inner)
    return h.digest()


def _canon(v, out):
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


def canonical(device_id, kind, cmd):
    """Bytes that are signed: version, device, command kind, seq, exp and the whole
    command minus "sig". Device and kind inside stop a command signed for one gateway
    or topic from being replayed to another."""
    body = {}
    for k in cmd:
        if k != "sig":
            body[k] = cmd[k]
    out = []
    _canon(body, out)
    return ("edgegw1|%s|%s|%d|%d|%s" % (device_id, kind, cmd["seq"], cmd["exp"],
                                         "".join(out))).encode()


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


class Verifier:
    """Checks signed commands for one device. The last accepted seq of each command kind
    (setpoints come from the cloud, forecasts from the tracker: separate counters) is kept
    in `path` (one small file write per accepted command) so a reboot reopens no replays."""

    def __init__(self, key, device_id, path=None):
        self.key = key
        self.device_id = device_id
        self.path = path
        self.last = {}  # kind -> last accepted seq
        if path:
            try:
                with open(path) as f:
                    d = json.loads(f.read())
                for k in d:
                    if _is_int(d[k]):
                        self.last[k] = d[k]
            except (OSError, ValueError):
                pass

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
            want = hexlify(hmac_sha256(self.key, canonical(self.device_id, kind, cmd))).decode()
        except ValueError:
            return MALFORMED
        if not _same(sig.lower(), want):
            return BAD_SIG
        if cmd["exp"] <= now_s:
            return STALE
        if cmd["seq"] <= self.last.get(kind, -1):
            return REPLAYED
        return OK

    def accept(self, kind, cmd):
        """Record cmd's seq as used (after the command was also found valid)."""
        self.last[kind] = cmd["seq"]
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(self.last))
            try:
                os.rename(tmp, self.path)
            except OSError:
                try:
                    os.remove(self.path)
                except OSError:
                    pass
                os.rename(tmp, self.path)
