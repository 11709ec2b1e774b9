# Store-and-forward ring on the filesystem (runs on CPython and MicroPython).
import os

from _helpers import raises
from edgefw.ring import Ring, HDR_LEN


def _dir(name):
    p = "/tmp/edgegw-test-ring-%s" % name
    try:
        for f in os.listdir(p):
            os.remove(p + "/" + f)
    except OSError:
        pass
    return p


def _segs(p):
    return sorted(f for f in os.listdir(p) if f.endswith(".seg"))


def _rec(i):
    return ('{"seq":%d,"grid_w":%d}' % (i, i * 10)).encode()


def _drain(r, ack=True):
    got = []
    while True:
        x = r.next()
        if x is None:
            return got
        tok, kind, seq, payload = x
        assert payload == _rec(seq)
        got.append(seq)
        if ack:
            r.ack(tok)


def test_order_ack_and_empty_ring_has_no_files():
    p = _dir("order")
    r = Ring(p, 4096, 4)
    for i in range(1, 31):
        r.append(1, i, _rec(i))
    assert len(r) == 30
    assert _drain(r) == list(range(1, 31))
    assert len(r) == 0
    assert _segs(p) == []
    r.append(1, 31, _rec(31))
    assert _drain(r) == [31]


def test_survives_reboot_oldest_first():
    p = _dir("reboot")
    r = Ring(p, 4096, 4)
    for i in range(1, 21):
        r.append(2 if i % 5 == 0 else 1, i, _rec(i))
    r = Ring(p, 4096, 4)  # "reboot"
    assert len(r) == 20 and r.torn == 0
    kinds = []
    while True:
        x = r.next()
        if x is None:
            break
        kinds.append(x[1])
        r.ack(x[0])
    assert kinds == [2 if i % 5 == 0 else 1 for i in range(1, 21)]


def test_full_drops_oldest_segment_and_counts():
    p = _dir("full")
    r = Ring(p, 1024, 4)  # 256-byte segments, ~8 records each
    n = 200
    for i in range(1, n + 1):
        r.append(1, i, _rec(i))
        assert len(_segs(p)) <= 4
    got = _drain(r)
    assert got == list(range(got[0], n + 1))  # the newest survive, contiguous
    assert r.dropped == got[0] - 1
    assert r.dropped + len(got) == n


def test_torn_tail_after_power_cut_is_skipped():
    p = _dir("torn")
    r = Ring(p, 4096, 4)
    for i in range(1, 6):
        r.append(1, i, _rec(i))
    seg = p + "/" + _segs(p)[-1]
    with open(seg, "rb") as f:
        data = f.read()
    # power cut in the middle of the 6th record's write
    with open(seg, "wb") as f:
        f.write(data + b"\xa5\x01" + b"\x20\x00" + b"\x06\x00")
    r = Ring(p, 4096, 4)
    assert len(r) == 5 and r.torn == 1
    r.append(1, 7, _rec(7))  # goes to a fresh segment, not after the torn bytes
    assert len(_segs(p)) == 2
    assert _drain(r) == [1, 2, 3, 4, 5, 7]


def test_corrupt_record_in_the_middle_is_skipped():
    p = _dir("corrupt")
    r = Ring(p, 4096, 4)
    for i in range(1, 6):
        r.append(1, i, _rec(i))
    seg = p + "/" + _segs(p)[0]
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    rl = HDR_LEN + len(_rec(1))
    data[rl + HDR_LEN + 3] ^= 0xFF  # a payload byte of record 2
    with open(seg, "wb") as f:
        f.write(data)
    r2 = Ring(p, 4096, 4)
    assert len(r2) == 4 and r2.torn == 1
    assert _drain(r2) == [1, 3, 4, 5]
    # the same damage found while reading (not at open)
    p = _dir("corrupt2")
    r = Ring(p, 4096, 4)
    for i in range(1, 6):
        r.append(1, i, _rec(i))
    with open(p + "/" + _segs(p)[0], "wb") as f:
        f.write(data)
    assert _drain(r) == [1, 3, 4, 5]
    assert r.torn == 1


def test_rewind_resends_unacked_and_reboot_resends_segment():
    p = _dir("rewind")
    r = Ring(p, 4096, 4)
    for i in range(1, 11):
        r.append(1, i, _rec(i))
    t1 = r.next()
    r.next()
    r.next()
    r.ack(t1[0])
    assert r.unsent() == 7
    r.rewind()  # connection lost with 2 and 3 in flight
    assert r.unsent() == 9
    assert _drain(r, ack=False)[:2] == [2, 3]
    r.rewind()
    x = r.next()
    r.ack(x[0])
    # reboot: the partly acked segment is sent again from its start; nothing is lost
    r = Ring(p, 4096, 4)
    got = _drain(r)
    assert got == list(range(got[0], 11)) and got[0] <= 3


def test_drop_while_records_in_flight():
    p = _dir("dropflight")
    r = Ring(p, 1024, 4)
    for i in range(1, 9):
        r.append(1, i, _rec(i))
    inflight = [r.next() for _ in range(3)]
    for i in range(9, 60):
        r.append(1, i, _rec(i))
    for x in inflight:  # acks for records the full policy already dropped are ignored
        r.ack(x[0])
    got = _drain(r)
    assert got[-1] == 59 and got == list(range(got[0], 60))
    assert r.dropped + len(got) == 59
    assert len(r) == 0 and _segs(p) == []


def test_rejects_oversize_and_bad_geometry():
    p = _dir("bad")
    raises(ValueError, Ring, p, 1024, 1)
    raises(ValueError, Ring, p, 512, 4)
    r = Ring(p, 1024, 4)
    raises(ValueError, r.append, 1, 1, b"x" * 300)
