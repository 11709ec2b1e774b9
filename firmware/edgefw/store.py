# The gateway's one file format for state that must survive a power cut (config, energy
# counters, replay-protection slots, link state): JSON text, optionally followed by the
# trailer line "#crc32 <8 hex>" over the text before it, written to a temp file and renamed
# over the old one, so a cut leaves the old file or the new one, and a torn or edited file
# is told from a good one by its CRC. Every writer of such a file goes through here.
# (The telemetry ring is a log of binary records with a CRC each: ring.py, not a file.)
# Files written before this module (config.py, energy.py, auth.py had their own copies)
# used this very trailer: they read unchanged, no upgrade step is needed.
import json
import os

from binascii import crc32

TRAILER = "\n#crc32 "
CHUNK = 512  # file and CRC pieces: no allocation of a file's size (a config is 5-8 KB)


def crc(text, c=0):
    """CRC-32 of str (its UTF-8, in pieces: no second copy of a big text) or bytes."""
    # unsigned on CPython 3 and MicroPython: no mask (a long-int op on 32-bit)
    if isinstance(text, str):
        for i in range(0, len(text), CHUNK):
            c = crc32(text[i:i + CHUNK].encode(), c)
        return c
    return crc32(text, c)


def file_crc(f, n=None):
    """CRC-32 of an open binary file from where it is (n bytes, or to its end) read in
    CHUNK pieces into one buffer. Returns (crc, bytes read)."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    c = 0
    got = 0
    while n is None or got < n:
        k = f.readinto(buf if n is None or n - got >= CHUNK else mv[:n - got])
        if not k:
            break
        c = crc32(mv[:k], c)
        got += k
    return c, got


def seal(body):
    """File text for body: body + the CRC trailer line (one allocation of the whole)."""
    return "".join((body, TRAILER, "%08x\n" % crc(body)))


def unseal(text):
    """(body, want, got): want is the trailer's CRC (None when there is no trailer), got
    the body's ("%08x"; None when there is no trailer)."""
    i = text.rfind(TRAILER)
    if i < 0:
        return text, None, None
    body = text[:i]
    return body, text[i + len(TRAILER):].strip(), "%08x" % crc(body)


def replace(tmp, path):
    """Rename tmp over path (the atomic step)."""
    try:
        os.rename(tmp, path)
    except OSError:
        # some filesystems refuse to rename onto an existing file: a cut between the two
        # steps leaves no path, which readers treat as missing (two slots, the last good)
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


def write_atomic(path, text):
    """Write a whole file so that a power cut leaves either the old or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    replace(tmp, path)


def write_json(path, obj, trailer=False):
    """write_atomic(path, json.dumps(obj)) (trailer: seal(json.dumps(obj))) without the
    text in RAM: json.dump writes it in pieces, the CRC is read back in pieces. The same
    bytes as the one-string forms."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    if trailer:
        with open(tmp, "rb") as f:
            c = file_crc(f)[0]
        with open(tmp, "a") as f:
            f.write(TRAILER)
            f.write("%08x\n" % c)
    replace(tmp, path)


def pieces(f, sink):
    """Read the open binary file f to its end in CHUNK pieces into one buffer, each
    handed to sink (a memoryview, valid until the next piece): no file-sized allocation."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    while True:
        k = f.readinto(buf)
        if not k:
            break
        sink(mv[:k])


def copy(src, dst):
    """Copy a file in pieces, atomically."""
    tmp = dst + ".tmp"
    with open(src, "rb") as a:
        with open(tmp, "wb") as b:
            pieces(a, b.write)
    replace(tmp, dst)


class Every:
    """Bounded flash writes: due(now_s) is true at most once every every_s seconds (the
    first call only starts the count; a write that then fails waits for the next turn)."""

    def __init__(self, every_s):
        self.every_s = every_s
        self.t = None

    def due(self, now_s):
        if self.t is None:
            self.t = now_s
            return False
        if now_s - self.t < self.every_s:
            return False
        self.t = now_s
        return True


def read_checked(path):
    """(exists, body or None): the body of a sealed file whose CRC matches; None when the
    file has no trailer or a wrong one (torn, corrupt) or cannot be decoded."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False, None
    except ValueError:  # not UTF-8 (UnicodeError): corrupt
        return True, None
    body, want, got = unseal(text)
    if want is None or want != got:
        return True, None
    return True, body
