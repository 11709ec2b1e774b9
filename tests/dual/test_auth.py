# Command signing and verification (runs on CPython and MicroPython).
import os
from binascii import hexlify

from _helpers import MICROPYTHON, raises
from edgefw import auth

KEY = bytes(range(32))
DEV = "gw-1"


def _tmp(name):
    p = "/tmp/edgegw-test-auth-%s" % name
    for q in (p, p + ".tmp", p + ".0", p + ".1", p + ".0.tmp", p + ".1.tmp"):
        try:
            os.remove(q)
        except OSError:
            pass
    return p


def _hx(b):
    return hexlify(b).decode()


def test_hmac_rfc4231_vectors():
    assert _hx(auth.hmac_sha256(b"\x0b" * 20, b"Hi There")) == \
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert _hx(auth.hmac_sha256(b"Jefe", b"what do ya want for nothing?")) == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    # key longer than the block is hashed first
    assert _hx(auth.hmac_sha256(b"\xaa" * 131,
                                b"Test Using Larger Than Block-Size Key - Hash Key First")) == \
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"


def test_hmac_matches_cpython_hmac():
    # (not _helpers.cpython_only: MicroPython functions take no attributes)
    if MICROPYTHON:
        return
    import hashlib
    import hmac
    for n in (0, 1, 63, 64, 65, 200):
        k = bytes((i * 7) & 0xFF for i in range(n))
        m = bytes(i & 0xFF for i in range(n * 3))
        assert auth.hmac_sha256(k, m) == hmac.new(k, m, hashlib.sha256).digest()


def test_canonical_is_sorted_compact_and_skips_sig():
    c = {"seq": 5, "exp": 100, "ts": 90, "p_w": -1500, "b": [1, "x\"y"], "a": {"z": None,
                                                                              "y": True}}
    c["sig"] = "whatever"
    got = auth.canonical(DEV, "setpoint", c)
    assert got == (b'edgegw1|gw-1|setpoint|5|100|{"a":{"y":true,"z":null},"b":[1,"x\\"y"],'
                   b'"exp":100,"p_w":-1500,"seq":5,"ts":90}')
    raises(ValueError, auth.canonical, DEV, "setpoint", {"seq": 1, "exp": 2, "f": 1.5})
    raises(ValueError, auth.canonical, DEV, "setpoint", {"seq": 1, "exp": 2, "t": "\u00e9"})


def _cmd(seq, exp, **kw):
    c = {"seq": seq, "ts": exp - 30, "exp": exp}
    for k in kw:
        c[k] = kw[k]
    return auth.sign(KEY, DEV, "setpoint", c)


def test_verify_reasons():
    v = auth.Verifier(KEY, DEV)
    c = _cmd(10, 1000, p_w=500)
    assert v.check("setpoint", c, 900) == auth.OK
    v.accept("setpoint", c)
    assert v.check("setpoint", c, 900) == auth.REPLAYED
    assert v.check("setpoint", _cmd(9, 1000, p_w=1), 900) == auth.REPLAYED
    assert v.check("setpoint", _cmd(11, 900, p_w=1), 900) == auth.STALE
    # expired by the sender's own clock (exp not after ts), though ts is in our future
    assert v.check("setpoint", auth.sign(KEY, DEV, "setpoint",
                                         {"seq": 11, "ts": 2000, "exp": 1000}), 900) == auth.STALE
    u = _cmd(12, 1000, p_w=1)
    del u["sig"]
    assert v.check("setpoint", u, 900) == auth.UNSIGNED
    t = _cmd(12, 1000, p_w=1)
    t["p_w"] = 2  # tampered after signing
    assert v.check("setpoint", t, 900) == auth.BAD_SIG
    # signed for another topic or another gateway
    assert v.check("schedule", _cmd(12, 1000, p_w=1), 900) == auth.BAD_SIG
    assert auth.Verifier(KEY, "gw-2").check("setpoint", _cmd(12, 1000), 900) == auth.BAD_SIG
    assert auth.Verifier(b"k" * 16, DEV).check("setpoint", _cmd(12, 1000), 900) == auth.BAD_SIG
    assert auth.Verifier(None, DEV).check("setpoint", _cmd(12, 1000), 900) == auth.NO_KEY
    assert v.check("setpoint", {"seq": "1", "exp": 1, "ts": 1}, 0) == auth.MALFORMED
    assert v.check("setpoint", [1], 0) == auth.MALFORMED
    assert v.check("setpoint", {"seq": 13, "exp": 1000, "ts": 1, "sig": "00"}, 0) == auth.BAD_SIG
    # upper-case hex signature is the same signature
    s = _cmd(14, 1000)
    s["sig"] = s["sig"].upper()
    assert v.check("setpoint", s, 900) == auth.OK


BOOT = 1764000000  # wall clock at boot in the persistence tests (2025-11-24)


def _sp(seq, ts, exp=BOOT + 3600, kind="setpoint"):
    return auth.sign(KEY, DEV, kind, {"seq": seq, "ts": ts, "exp": exp, "p_w": 1})


def test_last_seq_survives_restart():
    p = _tmp("seq")
    v = auth.Verifier(KEY, DEV, p, BOOT)
    assert v.last_seq("setpoint") == -1
    v.accept("setpoint", _sp(41, BOOT))
    v2 = auth.Verifier(KEY, DEV, p, BOOT + 50)
    assert v2.last_seq("setpoint") == 41 and v2.last_seq("forecast") == -1
    assert v2.check("setpoint", _sp(41, BOOT), BOOT) == auth.REPLAYED
    assert v2.check("setpoint", _sp(42, BOOT), BOOT) == auth.OK
    # each kind has its own counter (forecasts come from the tracker, not the cloud)
    assert v2.check("forecast", _sp(5, BOOT, kind="forecast"), BOOT) == auth.OK
    for k in (".0", ".1"):
        try:
            os.remove(p + k)
        except OSError:
            pass


def _write(p, text):
    with open(p, "w") as f:
        f.write(text)


def _read(p):
    with open(p) as f:
        return f.read()


def test_replay_after_torn_or_lost_seq_file_fails_closed():
    # review finding 11: a torn/lost seq file reopened every unexpired command to replay
    p = _tmp("torn")
    old = _sp(5, BOOT - 3600)                 # captured an hour before the next boot
    v = auth.Verifier(KEY, DEV, p, BOOT - 3700)
    assert v.check("setpoint", old, BOOT - 3600) == auth.OK
    v.accept("setpoint", old)
    assert auth.Verifier(KEY, DEV, p, BOOT).check("setpoint", old, BOOT) == auth.REPLAYED
    # the only slot torn mid-write: no record left -> only commands made after boot pass
    slot = p + ".1"
    t = _read(slot)
    _write(slot, t[:len(t) // 2])
    v = auth.Verifier(KEY, DEV, p, BOOT)
    assert v.recovered == "none" and v.floor == BOOT - auth.SKEW_S
    assert v.check("setpoint", old, BOOT) == auth.TOO_OLD
    assert v.check("setpoint", _sp(6, BOOT - auth.SKEW_S - 1), BOOT) == auth.TOO_OLD
    fresh = _sp(6, BOOT - 10)                 # made just before boot, within the skew
    assert v.check("setpoint", fresh, BOOT) == auth.OK
    v.accept("setpoint", fresh)
    # both files gone (wiped filesystem): same
    _tmp("torn")
    assert auth.Verifier(KEY, DEV, p, BOOT).check("setpoint", old, BOOT) == auth.TOO_OLD


def test_torn_newest_slot_falls_back_to_the_other_and_keeps_the_floor():
    p = _tmp("slots")
    v = auth.Verifier(KEY, DEV, p, BOOT)
    for s in (10, 11, 12):
        v.accept("setpoint", _sp(s, BOOT))
    v.accept("forecast", _sp(7, BOOT, kind="forecast"))  # n=4 -> slot 0
    v2 = auth.Verifier(KEY, DEV, p, BOOT + 100)
    assert v2.recovered == "slot" and v2.last_seq("setpoint") == 12
    assert v2.last_seq("forecast") == 7 and v2.floor == BOOT - auth.SKEW_S
    # newest slot corrupt (one byte flipped behind the CRC): the other slot's record,
    # plus a floor at this boot, so the lost forecast seq 7 cannot be replayed
    t = _read(p + ".0")
    _write(p + ".0", t.replace('"forecast": 7', '"forecast": 8'))
    v3 = auth.Verifier(KEY, DEV, p, BOOT + 1000)
    assert v3.recovered == "slot, other slot bad"
    assert v3.last_seq("setpoint") == 12 and v3.last_seq("forecast") == -1
    assert v3.floor == BOOT + 1000 - auth.SKEW_S
    assert v3.check("forecast", _sp(7, BOOT, kind="forecast"), BOOT + 1000) == auth.TOO_OLD
    assert v3.check("setpoint", _sp(12, BOOT + 999), BOOT + 1000) == auth.REPLAYED
    assert v3.check("setpoint", _sp(13, BOOT + 999), BOOT + 1000) == auth.OK
    # a file that is not a record at all
    _write(p + ".1", "garbage")
    _write(p + ".0", "")
    assert auth.Verifier(KEY, DEV, p, BOOT).recovered == "none"


def test_legacy_seq_file_still_counts():
    p = _tmp("legacy")
    _write(p, '{"setpoint": 20}')
    v = auth.Verifier(KEY, DEV, p, BOOT)
    assert v.recovered == "legacy" and v.last_seq("setpoint") == 20
    assert v.check("setpoint", _sp(20, BOOT), BOOT) == auth.REPLAYED
    assert v.check("setpoint", _sp(21, BOOT - 3600), BOOT) == auth.TOO_OLD
    os.remove(p)


def test_no_record_and_clock_not_set_rejects_until_the_clock_is_set():
    from edgefw import clock
    p = _tmp("noclock")
    v = auth.Verifier(KEY, DEV, p, 946684800 + 5)  # RTC at 2000-01-01 after a power cycle
    c = _sp(1, 946684800 + 5, exp=946684800 + 100)
    assert v.check("setpoint", c, 946684800 + 6) == auth.NO_CLOCK
    # the clock gets set (NTP): the floor is the boot time, from the uptime
    now = clock.time()
    assert v.check("setpoint", _sp(1, now - 3 * auth.SKEW_S, exp=now + 60), now) == auth.TOO_OLD
    assert v.floor is not None and now - auth.SKEW_S - 5 <= v.floor <= now - auth.SKEW_S
    assert v.check("setpoint", _sp(1, now, exp=now + 60), now) == auth.OK


def test_parse_key():
    assert auth.parse_key("00" * 16) == b"\x00" * 16
    raises(ValueError, auth.parse_key, "00" * 8)
    raises(ValueError, auth.parse_key, "zz" * 16)
    raises(ValueError, auth.parse_key, None)
