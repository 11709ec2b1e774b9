# What the firmware relies on after dropping its 0xFFFFFFFF masks (issue 19: a long-int op
# on 32-bit): binascii.crc32 is unsigned on every runtime, also when chained, so the
# "%08x" trailers of config/energy/auth files and the ring's packed CRC agree everywhere.
import struct
from binascii import crc32

from protocols import regmap as r


def test_crc32_unsigned_and_chained_alike_on_every_runtime():
    assert crc32(b"123456789") == 0xCBF43926                  # above 2**31: not negative
    assert "%08x" % crc32(b"123456789") == "cbf43926"
    assert crc32(b"x", crc32(b"123456789")) == 1578788679
    assert struct.unpack("<I", struct.pack("<I", crc32(b"123456789")))[0] == 0xCBF43926


def test_f32_and_s32_words_without_2_31():
    # scaled_to_f32 builds the sign into the high word; s32 encodes/decodes from halves
    assert r.scaled_to_f32(-1, 1) == (0xBF80, 0x0000)
    assert r.scaled_to_f32(-3, 2) == (0xBFC0, 0x0000)
    assert r.f32_to_scaled(0xBFC0, 0x0000, 2) == -3
    m = r.build({"name": "t", "points": {
        "a": {"table": "holding", "addr": 0, "type": "s32"},
        "b": {"table": "holding", "addr": 2, "type": "u32"}}})
    for v, words in ((-500, [0xFFFF, 0xFE0C]), (-(1 << 31), [0x8000, 0]),
                     ((1 << 31) - 1, [0x7FFF, 0xFFFF]), (70000, [1, 4464])):
        assert r.encode_point(m, "a", v)[2] == words, v
        assert r.decode(m, 3, 0, words + [0, 0])["a"] == v
    assert r.encode_point(m, "b", 0xFFFFFFFF)[2] == [0xFFFF, 0xFFFF]
    for bad in (1 << 31, -(1 << 31) - 1):
        try:
            r.encode_point(m, "a", bad)
            raise AssertionError("%d accepted as s32" % bad)
        except r.RegMapError:
            pass
    for bad in (-1, 1 << 32):
        try:
            r.encode_point(m, "b", bad)
            raise AssertionError("%d accepted as u32" % bad)
        except r.RegMapError:
            pass
