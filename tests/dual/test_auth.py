# Command signing and verification (runs on CPython and MicroPython).
import os
from binascii import hexlify

from _helpers import MICROPYTHON, raises
from edgefw import auth

KEY = bytes(range(32))
DEV = "gw-1"


def _tmp(name):
    p = "/tmp/edgegw-test-auth-%s" % name
    for q in (p, p + ".tmp"):
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


def test_last_seq_survives_restart():
    p = _tmp("seq")
    v = auth.Verifier(KEY, DEV, p)
    assert v.last_seq("setpoint") == -1
    v.accept("setpoint", _cmd(41, 1000))
    v2 = auth.Verifier(KEY, DEV, p)
    assert v2.last_seq("setpoint") == 41 and v2.last_seq("forecast") == -1
    assert v2.check("setpoint", _cmd(41, 1000), 0) == auth.REPLAYED
    assert v2.check("setpoint", _cmd(42, 1000), 0) == auth.OK
    # each kind has its own counter (forecasts come from the tracker, not the cloud)
    f = auth.sign(KEY, DEV, "forecast", {"seq": 5, "ts": 1, "exp": 1000})
    assert v2.check("forecast", f, 0) == auth.OK
    os.remove(p)


def test_parse_key():
    assert auth.parse_key("00" * 16) == b"\x00" * 16
    raises(ValueError, auth.parse_key, "00" * 8)
    raises(ValueError, auth.parse_key, "zz" * 16)
    raises(ValueError, auth.parse_key, None)
