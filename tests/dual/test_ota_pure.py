# OTA pure pieces (docs/ota.md): offer check, chunk framing, boot record decisions.
from edgefw import otarec
from protocols import topics as T

H = "ab" * 32


def _offer():
    return {"version": "v2", "chunk": 4096, "trial_s": 60,
            "files": [{"path": "edgefw/app.mpy", "size": 10, "sha256": H}]}


def test_offer_check():
    assert T.check_ota_offer(_offer()) == []
    o = _offer()
    o["files"][0]["path"] = "../boot.py"
    assert T.check_ota_offer(o)[0].startswith("files[0].path")
    o = _offer()
    o["chunk"] = 5000
    assert T.check_ota_offer(o)[0].startswith("chunk:")
    o = _offer()
    o["files"][0]["sha256"] = "xy"
    assert T.check_ota_offer(o)[0].startswith("files[0].sha256")


def test_chunk_framing():
    ver, f, o, d = T.parse_ota_chunk(T.ota_chunk("v2", 3, 8192, b"abc"))
    assert (ver, f, o, bytes(d)) == ("v2", 3, 8192, b"abc")
    try:
        T.parse_ota_chunk(T.ota_chunk("v2", 0, 0, b"x" * (T.OTA_MAX_CHUNK + 1)))
        assert False
    except ValueError as e:
        assert "over 4096" in str(e)


def test_boot_record_decisions():
    ok = lambda s: True
    assert otarec.decide(None, ok) == ("base", None)
    r = {"active": "a", "prev": "base", "trial": True, "tries": 0, "version": "v2"}
    slot, n = otarec.decide(r, ok)
    assert slot == "a" and n["tries"] == 1
    slot, n = otarec.decide(n, ok)  # booted again on trial: back
    assert slot == "base" and n["failed"] == "v2" and not n["trial"]
    slot, n = otarec.decide(r, lambda s: False)  # slot without a manifest
    assert slot == "base"
    assert otarec.parse('{"active": "zz"}') is None and otarec.parse("x") is None
    assert otarec.inactive("base") == "a" and otarec.inactive("a") == "b"
