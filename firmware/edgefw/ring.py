# Store-and-forward ring: records that could not be sent, kept on the filesystem until
# the broker acknowledges them, delivered oldest first. Bounded: at most `nseg` segment
# files of max_bytes/nseg bytes each. Full policy: the oldest segment is dropped whole
# (its undelivered records counted in `dropped`). Survives reboot and power cuts: each
# record carries a length and CRC-32, a torn or corrupt record is skipped (counted in
# `torn`) and the reader resynchronises on the next valid header. Records already acked
# in a partly delivered segment are sent again after a reboot; the receiver drops them
# by seq (every record carries the sender's seq). Spec: docs/mqtt.md "Store and forward".
import os
import struct
from binascii import crc32

_MAGIC = 0xA5
_HDR = "<BBHII"  # magic, kind, payload length, seq, crc32(kind..seq + payload)
HDR_LEN = 12


def _crc(hdr7, payload):
    # binascii.crc32 is unsigned on CPython 3 and MicroPython: no mask (a long-int op on
    # 32-bit); the value is only packed and compared
    return crc32(payload, crc32(hdr7))


def _pack(kind, seq, payload):
    h = struct.pack("<BHI", kind, len(payload), seq)
    return struct.pack(_HDR, _MAGIC, kind, len(payload), seq, _crc(h, payload)) + payload


def _parse(buf, off):
    """Record at buf[off:] -> (kind, seq, payload_start, end) or None if not valid."""
    if len(buf) - off < HDR_LEN or buf[off] != _MAGIC:
        return None
    magic, kind, n, seq, crc = struct.unpack_from(_HDR, buf, off)
    end = off + HDR_LEN + n
    if end > len(buf):
        return None
    p = memoryview(buf)[off + HDR_LEN:end]
    if _crc(bytes(buf[off + 1:off + 8]), p) != crc:
        return None
    return kind, seq, off + HDR_LEN, end


def _scan(buf, off=0):
    """Valid records from off: yields (kind, seq, start, end); skips garbage byte by byte.
    Sets nothing; the caller compares the last end with len(buf) to spot a torn tail."""
    n = len(buf)
    while off < n:
        r = _parse(buf, off)
        if r is None:
            off += 1
            continue
        yield r
        off = r[3]


_PIECE = 256  # a segment (8-16 KB) is read a record header and a piece at a time


class _Reader:
    """Records of one open segment file read in place: a 12-byte header and the payload's
    CRC in _PIECE pieces through one buffer, never the whole segment in RAM."""

    def __init__(self, f, size):
        self.f = f
        self.size = size
        self.buf = bytearray(_PIECE)
        self.mv = memoryview(self.buf)

    def _at(self, off, n):
        # n <= _PIECE bytes at off into the buffer: a memoryview of what was read
        self.f.seek(off)
        k = self.f.readinto(self.mv[:n])
        return self.mv[:k or 0]

    def rec(self, off):
        """(kind, seq, payload_start, end) of a valid record at off, or None."""
        h = self._at(off, HDR_LEN)
        if len(h) < HDR_LEN or h[0] != _MAGIC:
            return None
        magic, kind, n, seq, want = struct.unpack_from(_HDR, h, 0)
        end = off + HDR_LEN + n
        if end > self.size:
            return None
        crc = crc32(bytes(h[1:8]))
        p = off + HDR_LEN
        while p < end:
            k = min(_PIECE, end - p)
            d = self._at(p, k)
            if len(d) < k:
                return None
            crc = crc32(d, crc)
            p += k
        if crc != want:
            return None
        return kind, seq, off + HDR_LEN, end

    def scan(self, off=0):
        """As _scan over the file: valid records from off, garbage skipped byte by byte."""
        while off < self.size:
            r = self.rec(off)
            if r is None:
                off += 1
                continue
            yield r
            off = r[3]


class Ring:
    def __init__(self, dirpath, max_bytes=65536, nseg=8):
        if nseg < 2:
            raise ValueError("ring needs at least 2 segments")
        self.dir = dirpath
        self.nseg = nseg
        self.seg_bytes = max_bytes // nseg
        if self.seg_bytes < 256:
            raise ValueError("ring of %d bytes in %d segments is too small" % (max_bytes, nseg))
        self.dropped = 0   # undelivered records lost to the full policy (since boot)
        self.torn = 0      # corrupt/torn records skipped (since boot)
        try:
            os.mkdir(dirpath)
        except OSError:
            pass
        nums = []
        for name in os.listdir(dirpath):
            if name.endswith(".seg"):
                try:
                    nums.append(int(name[:-4]))
                except ValueError:
                    pass
        nums.sort()
        self.segs = []  # [num, size, records] oldest first
        self._wopen = True  # may the last segment take more records (no torn tail)?
        for num in nums:
            cnt = 0
            last = 0
            with open(self._path(num), "rb") as f:
                size = f.seek(0, 2)
                for r in _Reader(f, size).scan():
                    cnt += 1
                    if r[2] - HDR_LEN != last:
                        self.torn += 1
                    last = r[3]
            if last != size:
                self.torn += 1
            if cnt == 0:
                self._rm(num)
                continue
            self.segs.append([num, size, cnt])
            self._wopen = last == size
        self.pending = 0  # records stored and not yet acked
        for s in self.segs:
            self.pending += s[2]
        self._a_acked = 0  # records acked in segs[0]
        self._s_idx = 0    # send cursor: segment index and offset
        self._s_off = 0
        self._s_cnt = 0    # records handed out and not acked
        self._num = self.segs[-1][0] + 1 if self.segs else 0  # next segment file number

    def _path(self, num):
        return "%s/%08d.seg" % (self.dir, num)

    def _rm(self, num):
        try:
            os.remove(self._path(num))
        except OSError:
            pass

    def _read(self, num, off, n):
        with open(self._path(num), "rb") as f:
            if off:
                f.seek(off)
            return f.read() if n is None else f.read(n)

    def __len__(self):
        return self.pending

    def unsent(self):
        """Records stored and not yet handed out by next()."""
        return self.pending - self._s_cnt

    def append(self, kind, seq, payload):
        if isinstance(payload, str):
            payload = payload.encode()
        rec = _pack(kind, seq, payload)
        if len(rec) > self.seg_bytes:
            raise ValueError("record of %d bytes exceeds the ring segment (%d bytes)"
                             % (len(rec), self.seg_bytes))
        if not self.segs or not self._wopen or self.segs[-1][1] + len(rec) > self.seg_bytes:
            if len(self.segs) >= self.nseg:
                self._drop_oldest()
            self.segs.append([self._num, 0, 0])
            self._num += 1
            self._wopen = True
        s = self.segs[-1]
        with open(self._path(s[0]), "ab") as f:
            f.write(rec)
        s[1] += len(rec)
        s[2] += 1
        self.pending += 1

    def _drop_oldest(self):
        s = self.segs.pop(0)
        lost = s[2] - self._a_acked
        self.dropped += lost
        self.pending -= lost
        self._rm(s[0])
        if self._s_idx == 0:
            # records of that segment handed out and not acked are gone with it
            self._s_cnt = 0
            self._s_off = 0
        else:
            self._s_idx -= 1
            self._s_cnt -= lost
        self._a_acked = 0

    def next(self):
        """Hand out the oldest record not yet handed out: (token, kind, seq, payload) or
        None. Pass token to ack() once the broker confirmed it."""
        while self._s_idx < len(self.segs):
            s = self.segs[self._s_idx]
            if self._s_off < s[1]:
                hdr = self._read(s[0], self._s_off, HDR_LEN)
                n = struct.unpack_from("<H", hdr, 2)[0] if len(hdr) == HDR_LEN else 0
                buf = hdr + self._read(s[0], self._s_off + HDR_LEN, n) if n else hdr
                r = _parse(buf, 0)
                if r is None:
                    # corrupt record: resynchronise on the next valid header in the segment
                    self.torn += 1
                    with open(self._path(s[0]), "rb") as f:
                        r = None
                        for x in _Reader(f, s[1]).scan(self._s_off + 1):
                            r = x
                            break
                        if r is not None:
                            f.seek(r[2])
                            payload = f.read(r[3] - r[2])
                    if r is None:
                        self._s_off = s[1]
                        continue
                    self._s_off = r[3]
                    self._s_cnt += 1
                    return (s[0], self._s_off), r[0], r[1], payload
                self._s_off += r[3]
                self._s_cnt += 1
                return (s[0], self._s_off), r[0], r[1], bytes(buf[r[2]:r[3]])
            if self._s_idx == len(self.segs) - 1:
                return None
            self._s_idx += 1
            self._s_off = 0
        return None

    def ack(self, token):
        """The record handed out with token (and every one before it) is delivered."""
        num, end = token
        while self.segs and self.segs[0][0] < num:  # earlier segments: all delivered
            s = self.segs.pop(0)
            done = s[2] - self._a_acked
            self.pending -= done
            self._s_cnt -= done
            self._a_acked = 0
            self._s_idx -= 1
            self._rm(s[0])
        if not self.segs or self.segs[0][0] != num:
            return  # segment already dropped by the full policy
        self._a_acked += 1
        self.pending -= 1
        self._s_cnt -= 1
        if self.pending <= 0:
            # everything delivered: an empty ring has no files
            for s in self.segs:
                self._rm(s[0])
            self.segs = []
            self.pending = self._s_cnt = self._a_acked = self._s_idx = self._s_off = 0
            return
        s = self.segs[0]
        if end >= s[1] and len(self.segs) > 1:
            # whole segment delivered: deleting the file is the persistent progress mark
            self.segs.pop(0)
            self._rm(s[0])
            self._a_acked = 0
            if self._s_idx > 0:
                self._s_idx -= 1
            else:
                self._s_off = 0

    def rewind(self):
        """Forget records handed out and not acked (connection lost): they go again."""
        self._s_idx = 0
        self._s_cnt = 0
        self._s_off = 0
        if self._a_acked and self.segs:
            # skip what is already acked in the first segment
            s = self.segs[0]
            k = 0
            with open(self._path(s[0]), "rb") as f:
                for r in _Reader(f, s[1]).scan():
                    k += 1
                    if k == self._a_acked:
                        self._s_off = r[3]
                        break
