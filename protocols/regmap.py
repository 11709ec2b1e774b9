# Register maps as data: load a device map (protocols/maps/<name>.json), plan the fewest
# reads, decode responses to scaled integers, encode writes with bounds checks, and the
# reverse (simulator side). Format: docs/regmap-format.md. Runs on MicroPython and CPython.
# Integer-only: float32 registers are converted from their IEEE bits with exact integer
# arithmetic, so both runtimes give the same ints and the gateway never uses floats.
import json
import sys

TABLES = ("coil", "discrete", "input", "holding")
READ_FC = {"coil": 1, "discrete": 2, "input": 4, "holding": 3}
FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input",
            5: "coil", 15: "coil", 6: "holding", 16: "holding"}
# type -> size in registers (register tables); bit tables use "bit" (1) or "bits" (n)
REG_TYPES = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "cmdmag": 2}


class RegMapError(ValueError):
    """Bad map, unknown point, read-only or out-of-bounds write. code: the Modbus exception
    a simulated device should answer with (2 illegal address, 3 illegal value)."""

    def __init__(self, msg, code=3):
        super().__init__(msg)
        self.code = code


def _maps_dir():
    try:
        d = __file__.rsplit("/", 1)
        if len(d) == 2:
            return d[0] + "/maps"
    except NameError:
        pass
    return "protocols/maps"


MAPS_DIR = _maps_dir()
# A map asked for by name is found, first hit wins (docs/firmware.md "A frozen image"):
# 1. frozen into the image: module protocols.maps_frozen, MAPS = {name: JSON text}, made
#    from protocols/maps/*.json by edgegw.mapgen when firmware/manifest.py builds an image
#    (the text stays in flash; absent on source runs);
# 2. MAPS_LOCAL: maps/ next to config.json in the gateway's working directory (what
#    `edgegw deploy --frozen` copies: never a protocols/ folder, which would shadow the
#    frozen package);
# 3. MAPS_DIR: the package's own protocols/maps (source and .mpy deploys, the host).
MAPS_LOCAL = "maps"
DOC = sys.implementation.name != "micropython"  # keep unit/bits/desc, map source text


class _Names:
    pass


def _intern(s):
    """s as an interned string on MicroPython: an attribute name is a qstr, its text kept
    once in the qstr pool (or found in the firmware's, in flash, when the code names the
    point) and its str object an immediate. A point name json makes is a 32 B heap object
    otherwise (about 1.9 KB for a typical site's maps on 32-bit). CPython: s itself."""
    if DOC:
        return s
    o = _Names()
    setattr(o, s, None)
    try:
        for k in o.__dict__:
            return k
    except AttributeError:  # a port built without instance __dict__: the str as it is
        pass
    return s


class RegMap:
    __slots__ = ("name", "source", "points", "max_regs", "max_bits", "gaps", "write_fc",
                 "_idx", "_plan")

    def __repr__(self):
        return "<RegMap %s: %d points>" % (self.name, len(self.points))


def _int(v, what):
    # addresses and raw codes may be written "0x1000" in the JSON for readability
    if isinstance(v, str):
        try:
            return int(v, 16) if v[:2] in ("0x", "0X") else int(v)
        except ValueError:
            pass
    elif isinstance(v, int) and not isinstance(v, bool):
        return v
    raise RegMapError("%s: %r is not an integer" % (what, v))


def load(name_or_path, variant=None, params=None, doc=None):
    """Load a map by name ("sdm630", "dtsu666@v4000") or path to a .json file.
    variant: name of a variant in the map's "variants" (address overrides);
    params: overrides for the map's "params" (e.g. {"ct": 40} for a CT-connected meter)."""
    s = name_or_path
    if not isinstance(s, str) or not s:
        raise RegMapError("map name %r is not a non-empty string" % (s,))
    if "@" in s and variant is None:
        s, variant = s.split("@", 1)
    if "/" in s or s.endswith(".json"):
        paths = (s,)
    else:
        text = frozen_map(s)
        if text is not None:
            try:
                mdoc = json.loads(text)
            except ValueError as e:
                raise RegMapError("map %r: invalid JSON in the frozen maps (%s)" % (s, e))
            return build(mdoc, variant, params, doc)
        paths = (MAPS_LOCAL + "/" + s + ".json", MAPS_DIR + "/" + s + ".json")
    for path in paths:
        try:
            with open(path) as f:
                mdoc = json.load(f)
        except OSError:
            continue
        except ValueError as e:
            raise RegMapError("map %r: invalid JSON in %s (%s)" % (s, path, e))
        return build(mdoc, variant, params, doc)
    raise RegMapError("map %r: no such file %s (not frozen in either)"
                      % (s, " or ".join(paths)), 2)


def frozen_map(name):
    """The JSON text of map `name` frozen into the image, or None (no such map, or no
    frozen maps: a source run)."""
    try:
        from protocols import maps_frozen
    except ImportError:
        return None
    return maps_frozen.MAPS.get(name)


def build(mdoc, variant=None, params=None, doc=None):
    """Validate a map document (dict) and build the RegMap; errors name map and point.
    doc: keep unit/bits/desc in the points (default: on CPython, not on MicroPython)."""
    if doc is None:
        doc = DOC
    if not isinstance(mdoc, dict):
        raise RegMapError("map document is not a JSON object")
    name = mdoc.get("name")
    if not isinstance(name, str) or not name:
        raise RegMapError("map: 'name' missing")
    pts = mdoc.get("points")
    if not isinstance(pts, dict) or not pts:
        raise RegMapError("%s: 'points' missing or empty" % name)
    pts = dict(pts)  # variants replace entries: leave the caller's document alone
    m = RegMap()
    m.name = name
    m.source = mdoc.get("source", "") if doc else ""  # documentation: off on the gateway
    m.max_regs = _int(mdoc.get("max_regs", 125), name + ": max_regs")
    m.max_bits = _int(mdoc.get("max_bits", 2000), name + ": max_bits")
    if not 1 <= m.max_regs <= 125 or not 1 <= m.max_bits <= 2000:
        raise RegMapError("%s: max_regs must be 1..125 and max_bits 1..2000" % name)
    m.write_fc = _int(mdoc.get("write_fc", 6), name + ": write_fc")
    if m.write_fc not in (6, 16):
        raise RegMapError("%s: write_fc must be 6 or 16" % name)
    wo = mdoc.get("word_order", "hi")
    prm = dict(mdoc.get("params") or {})
    if params:
        for k in params:
            if k not in prm:
                raise RegMapError("%s: unknown param %r (known: %s)" % (name, k, ", ".join(sorted(prm))))
            prm[k] = params[k]
    if variant is not None:
        vs = mdoc.get("variants") or {}
        if variant not in vs:
            raise RegMapError("%s: unknown variant %r (known: %s)" % (name, variant, ", ".join(sorted(vs)) or "none"))
        for pn, over in vs[variant].items():
            if pn not in pts:
                raise RegMapError("%s: variant %s names unknown point %r" % (name, variant, pn))
            p = dict(pts[pn])
            p.update(over)
            pts[pn] = p
    m.gaps = []
    for g in mdoc.get("gaps", ()):
        if not isinstance(g, list) or len(g) != 3 or g[0] not in TABLES:
            raise RegMapError("%s: gap %r must be [table, first, last]" % (name, g))
        m.gaps.append((g[0], _int(g[1], name + ": gap"), _int(g[2], name + ": gap")))
    m.points = {}
    idx = {}
    for pn in pts:
        p = _point(name, pn, pts[pn], wo, prm, doc)
        pn = _intern(pn)
        a = p["addr"]
        n = p["n"]
        for g in m.gaps:
            if g[0] == p["table"] and a <= g[2] and a + n - 1 >= g[1]:
                raise RegMapError("%s: point %s overlaps gap %r" % (name, pn, g))
        m.points[pn] = p
        idx.setdefault(p["table"], []).append((a, n, pn))
    # per table the point names in address order (addr and n are in the points): a
    # tuple (addr, n, name) per point would cost 32 B more each, 2.3 KB for a typical site
    for t in idx:
        idx[t].sort()
        idx[t] = tuple([e[2] for e in idx[t]])
    m._idx = idx
    m._plan = None
    _check_sf(m)
    return m


def _point(mname, pn, src, wo, prm, doc):
    what = "%s: point %s" % (mname, pn)
    if not isinstance(src, dict):
        raise RegMapError(what + ": not an object")
    p = dict(src)
    t = p.get("table")
    if t not in TABLES:
        raise RegMapError("%s: table %r not one of %s" % (what, t, "/".join(TABLES)))
    if "addr" not in p:
        raise RegMapError(what + ": addr missing")
    p["addr"] = a = _int(p["addr"], what + " addr")
    ty = p.get("type", "bit" if t in ("coil", "discrete") else "u16")
    p["type"] = ty
    n = _size(what, t, ty, p)
    if a < 0 or a + n > 0x10000:
        raise RegMapError("%s: address %d out of range" % (what, a))
    p["n"] = n
    o = p.get("word_order", wo)
    if o not in ("hi", "lo"):
        raise RegMapError("%s: word_order %r must be hi or lo" % (what, o))
    p["lo"] = o == "lo"
    p.pop("word_order", None)
    acc = p.get("access", "r")
    if acc not in ("r", "rw", "w"):
        raise RegMapError("%s: access %r must be r, rw or w" % (what, acc))
    p["access"] = acc
    k = _scale(what, p, prm)
    _codes(what, p, t, ty, n)
    for b in ("min", "max"):
        if b in p:
            p[b] = _int(p[b], what + " " + b)
    if acc != "r" and ("min" not in p or "max" not in p) and "values" not in p and ty != "bit":
        raise RegMapError(what + ": writable points need min and max")
    return _minimal(p, t, a, ty, n, acc, k, doc)


def _size(what, t, ty, p):
    """Registers (or bits) the point spans, from its table and type."""
    if t in ("coil", "discrete"):
        if ty == "bit":
            n = 1
        elif ty == "bits":
            n = _int(p.get("n", 0), what + " n")
            if not 1 <= n <= 2000:
                raise RegMapError(what + ": bits needs n in 1..2000")
        else:
            raise RegMapError("%s: type %r on a bit table (use bit or bits)" % (what, ty))
    else:
        if ty not in REG_TYPES:
            raise RegMapError("%s: unknown type %r (%s)" % (what, ty, "/".join(sorted(REG_TYPES))))
        n = REG_TYPES[ty]
    return n


def _scale(what, p, prm):
    """mul (resolved), div and offset checked in place; returns mul."""
    # scale: mul may name params ("ct") or list them (["pt", "ct"]); resolved here once
    mul = p.get("mul", 1)
    if not isinstance(mul, list):
        mul = [mul]
    k = 1
    for f in mul:
        if isinstance(f, str) and f in prm:
            f = prm[f]
        k *= _int(f, what + " mul")
    p["mul"] = k
    p["div"] = _int(p.get("div", 1), what + " div")
    p["offset"] = _int(p.get("offset", 0), what + " offset")
    if k == 0 or p["div"] <= 0:
        raise RegMapError(what + ": mul must be non-zero and div positive")
    return k


def _codes(what, p, t, ty, n):
    """The bit picks, enumerated values and cmdmag codes, checked in place."""
    if "pick" in p:
        pk = p["pick"]
        if not isinstance(pk, list) or not pk or len(pk) > 30:
            raise RegMapError(what + ": pick must list 1..30 bit offsets")
        lim = n if t in ("coil", "discrete") else 16 * n
        for b in pk:
            if not isinstance(b, int) or b < 0 or b >= lim:
                raise RegMapError("%s: pick offset %r outside 0..%d" % (what, b, lim - 1))
    elif t in ("coil", "discrete") and n > 30:
        raise RegMapError(what + ": more than 30 bits need a pick list")
    if "values" in p:  # [[value, raw], ...]: enumerated codes (e.g. run 1 <-> 0xCF)
        vs = []
        for e in p["values"]:
            if not isinstance(e, list) or len(e) != 2:
                raise RegMapError(what + ": values entries must be [value, raw]")
            vs.append((_int(e[0], what + " values"), _int(e[1], what + " values")))
        p["values"] = vs
    if ty == "cmdmag":  # [command word, magnitude word]: + = pos code, - = neg code, 0 = zero code
        for c in ("pos", "neg", "zero"):
            p[c] = _int(p.get(c, -1), what + " " + c)
        for e in p.get("pre", ()):
            if not isinstance(e, list) or len(e) != 2:
                raise RegMapError(what + ": pre entries must be [addr, raw]")
        p["pre"] = [(_int(e[0], what + " pre"), _int(e[1], what + " pre")) for e in p.get("pre", ())]


def _minimal(p, t, a, ty, n, acc, k, doc):
    # a fresh, minimal dict: defaults (mul 1, div 1, offset 0, hi word first) are left out
    # and read with .get, documentation only when asked for; the gateway's heap is small
    q = {"table": t, "addr": a, "type": ty, "n": n, "access": acc}
    if k != 1:
        q["mul"] = k
    for key in ("div", "offset"):
        if p[key] != (1 if key == "div" else 0):
            q[key] = p[key]
    if p["lo"]:
        q["lo"] = True
    for key in ("pick", "values", "default", "min", "max", "pos", "neg", "zero", "pre", "sf"):
        if key in p:
            q[key] = p[key]
    if doc:
        for key in ("unit", "bits", "desc"):
            if key in p:
                q[key] = p[key]
    return q


# ---- integer helpers (values may be negative: no bare // on them) -----------------------

def _div_round(a, b):
    # a / b rounded to nearest, halves away from zero; b > 0
    if a >= 0:
        return (2 * a + b) // (2 * b)
    return -((-2 * a + b) // (2 * b))


def _scale_in(p, raw):
    # raw register integer -> point units
    return _div_round(raw * p.get("mul", 1), p.get("div", 1)) + p.get("offset", 0)


def _scale_out(p, v):
    # point units -> raw integer (mul may be negative: keep the divisor positive)
    num = (v - p.get("offset", 0)) * p.get("div", 1)
    d = p.get("mul", 1)
    if d < 0:
        num = -num
        d = -d
    return _div_round(num, d)


def f32_to_scaled(hi, lo, mul=1, div=1):
    """IEEE-754 binary32 (as two words) times mul/div, rounded half away from zero, exactly.
    Returns None for NaN/Inf."""
    e = (hi >> 7) & 0xFF
    m = ((hi & 0x7F) << 16) | lo
    if e == 255:
        return None
    if e:
        m |= 0x800000
        e2 = e - 150
    else:
        e2 = -149
    if m == 0:
        return 0
    num = m * mul
    if num < 0:
        num = -num
        neg = not (hi & 0x8000)
    else:
        neg = hi & 0x8000
    if e2 >= 0:
        q = _div_round(num << e2, div)
    elif e2 < -120:
        q = 0
    else:
        q = _div_round(num, div << -e2)
    return -q if neg else q


def _bitlen(x):
    n = 0
    while x >= 0x10000:
        x >>= 16
        n += 16
    while x:
        x >>= 1
        n += 1
    return n


def scaled_to_f32(num, den=1):
    """The float32 nearest to num/den (round half to even), as (hi, lo) words. Integer math."""
    if den <= 0:
        raise RegMapError("scaled_to_f32: den must be positive")
    if num == 0:
        return 0, 0
    s = 0
    if num < 0:
        s = 0x8000  # the sign bit of the high word (2**31 would be a long int on 32-bit)
        num = -num
    k = 24 - (_bitlen(num) - _bitlen(den))  # num * 2^k / den lands near [2^23, 2^24)
    while True:
        a, b = (num << k, den) if k >= 0 else (num, den << -k)
        q = a // b
        if q >= 0x1000000:
            k -= 1
        elif q < 0x800000:
            k += 1
        else:
            break
    r = a - q * b
    if 2 * r > b or (2 * r == b and q & 1):
        q += 1
        if q == 0x1000000:
            q >>= 1
            k -= 1
    be = 150 - k
    if be >= 255:
        raise RegMapError("value %d/%d too large for float32" % (num, den))
    if be <= 0:
        return 0, 0  # below float32 normal range: not a meaningful device value
    return s | (be << 7) | ((q >> 16) & 0x7F), q & 0xFFFF


# ---- plan -------------------------------------------------------------------------------

def plan(m, names=None, max_regs=125):
    """Fewest reads covering the named points (all when None): list of (fc, addr, qty),
    merging across unused addresses but never into a gap; at most max_regs registers
    (or the map's max_bits bits) per read. Computed once per map for names=None."""
    if names is None and max_regs == 125 and m._plan is not None:
        return m._plan
    if names is None:
        sel = None
    else:
        sel = {}
        for n in _with_sf(m, names):
            if n not in m.points:
                raise RegMapError("%s: unknown point %r" % (m.name, n), 2)
            sel[n] = 1
    out = []
    for t in TABLES:
        if t not in m._idx:
            continue
        lim = m.max_bits if t in ("coil", "discrete") else min(max_regs, m.max_regs)
        gaps = [g for g in m.gaps if g[0] == t]
        start = end = -1  # current read [start, end)
        for pn in m._idx[t]:
            if sel is not None and pn not in sel:
                continue
            p = m.points[pn]
            if p["access"] == "w":
                continue
            a = p["addr"]
            n = p["n"]
            if start >= 0:
                e = a + n if a + n > end else end
                ok = e - start <= lim
                if ok:
                    for g in gaps:
                        if g[1] < e and g[2] >= start:
                            ok = False
                            break
                if ok:
                    end = e
                    continue
                out.append((READ_FC[t], start, end - start))
            if n > lim:
                raise RegMapError("%s: point %s (%d) longer than a read (%d)" % (m.name, pn, n, lim))
            start = a
            end = a + n
        if start >= 0:
            out.append((READ_FC[t], start, end - start))
    if names is None and max_regs == 125:
        m._plan = out
    return out


# ---- decode (gateway side) ----------------------------------------------------------------

def _raw(p, data, o):
    # unsigned raw integer of a point whose first word/bit is data[o]
    ty = p["type"]
    if p["n"] == 1:
        return data[o] & 0xFFFF if ty != "bit" else (1 if data[o] else 0)
    if ty == "bits":
        pk = p.get("pick")
        v = 0
        if pk:
            for i in range(len(pk)):
                if data[o + pk[i]]:
                    v |= 1 << i
            return v
        for i in range(p["n"]):
            if data[o + i]:
                v |= 1 << i
        return v
    if p.get("lo"):
        return (data[o + 1] << 16) | data[o]
    return (data[o] << 16) | data[o + 1]


def _value(p, data, o):
    """Decoded int of point p at data[o..], or None when not representable."""
    ty = p["type"]
    if ty == "f32":
        if p.get("lo"):
            hi, lo = data[o + 1], data[o]
        else:
            hi, lo = data[o], data[o + 1]
        v = f32_to_scaled(hi, lo, p.get("mul", 1), p.get("div", 1))
        return None if v is None else v + p.get("offset", 0)
    if ty == "cmdmag":
        c = data[o]
        mag = data[o + 1]
        if c == p["zero"]:
            return 0
        if c == p["pos"]:
            return _scale_in(p, mag)
        if c == p["neg"]:
            return -_scale_in(p, mag)
        return None
    if ty == "s32":
        # sign-extend the high word, then join: |v| < 2**30 never makes a long int on 32-bit
        if p.get("lo"):
            raw = (((data[o + 1] ^ 0x8000) - 0x8000) << 16) | data[o]
        else:
            raw = (((data[o] ^ 0x8000) - 0x8000) << 16) | data[o + 1]
    else:
        raw = _raw(p, data, o)
        if ty == "s16" and raw & 0x8000:
            raw -= 0x10000
    if "pick" in p and ty != "bits":
        pk = p["pick"]
        v = 0
        for i in range(len(pk)):
            if (raw >> pk[i]) & 1:
                v |= 1 << i
        raw = v
    vs = p.get("values")
    if vs:
        for v, r in vs:
            if r == raw:
                return v
        return p.get("default")
    return _scale_in(p, raw)


def decode(m, fc, addr, data):
    """{name: int} for every point lying fully inside the read [addr, addr+len(data)).
    data: register words (fc 3/4) or 0/1 bits (fc 1/2). Points whose raw value has no
    meaning (float NaN/Inf, unknown enumerated code) are left out."""
    t = FC_TABLE.get(fc)
    if t is None or fc in (5, 6, 15, 16):
        raise RegMapError("decode: fc %r is not a read function" % (fc,))
    out = {}
    lst = m._idx.get(t)
    if not lst:
        return out
    end = addr + len(data)
    pts = m.points
    for pn in lst:
        p = pts[pn]
        a = p["addr"]
        if a < addr:
            continue
        if a + p["n"] > end:
            if a >= end:
                break
            continue
        if "sf" in p:
            v = _sf_value(m, p, data, addr, a - addr)
        else:
            v = _value(p, data, a - addr)
        if v is not None:
            out[pn] = v
    return out


def bit_names(m, name, value):
    """Names of the set bits of a bitfield point (from the map's "bits" list)."""
    names = m.points[name].get("bits") or ()
    out = []
    i = 0
    while value and i < 30:
        if value & 1:
            out.append(names[i] if i < len(names) else "bit%d" % i)
        value >>= 1
        i += 1
    return out


# ---- live scale factors (SunSpec *_SF registers) -----------------------------------------
# A point with "sf": NAME is scaled by 10**(the s16 register NAME) on top of mul/div, read
# in the same request; a value whose scale factor is not in that read, or out of -10..10
# (0x8000 = not implemented), or that shows SunSpec's "not implemented" raw, is left out.

SF_MAX = 10
_SF_TYPES = ("u16", "s16", "u32", "s32")


def _unimplemented(p, data, o):
    # SunSpec's "not implemented" raw (0xFFFF, 0x8000, 0xFFFFFFFF, 0x80000000), judged
    # word by word so no 32-bit constant (a long int on a 32-bit port) is needed
    t = p["type"]
    w0 = data[o] & 0xFFFF
    if t == "u16":
        return w0 == 0xFFFF
    if t == "s16":
        return w0 == 0x8000
    w1 = data[o + 1] & 0xFFFF
    hi, lo = (w1, w0) if p.get("lo") else (w0, w1)
    if t == "u32":
        return hi == 0xFFFF and lo == 0xFFFF
    return hi == 0x8000 and lo == 0


def _check_sf(m):
    # sf names a read-only s16 point of the same table; only integer, unenumerated,
    # read-only points take one (a write would need the device's scale factor first)
    pts = m.points
    for pn in pts:
        p = pts[pn]
        s = p.get("sf")
        if s is None:
            continue
        what = "%s: point %s sf" % (m.name, pn)
        sp = pts.get(s) if isinstance(s, str) else None
        if sp is None or sp["type"] != "s16" or sp["table"] != p["table"] or "sf" in sp:
            raise RegMapError("%s: %r is not an s16 point of the %s table" % (what, s, p["table"]))
        if p["type"] not in _SF_TYPES or "values" in p or "pick" in p or p["access"] != "r":
            raise RegMapError(what + ": only read-only u16/s16/u32/s32 points without values/pick")


def _with_sf(m, names):
    # the named points plus the scale factors they need (same planned read)
    out = list(names)
    for n in names:
        p = m.points.get(n)
        s = p.get("sf") if p is not None else None
        if s is not None and s not in out:
            out.append(s)
    return out


def _sf_point(p, sf):
    # p with 10**sf folded into mul (sf >= 0) or div (sf < 0); None when out of range
    if sf < -SF_MAX or sf > SF_MAX:
        return None
    q = dict(p)
    if sf >= 0:
        q["mul"] = p.get("mul", 1) * 10 ** sf
    else:
        q["div"] = p.get("div", 1) * 10 ** -sf
    return q


def _sf_value(m, p, data, addr, o):
    so = m.points[p["sf"]]["addr"] - addr
    if so < 0 or so >= len(data):
        return None  # its scale factor is not in this read: never guess it
    if _unimplemented(p, data, o):
        return None
    sf = data[so] & 0xFFFF
    q = _sf_point(p, sf - 0x10000 if sf & 0x8000 else sf)
    return None if q is None else _value(q, data, o)


# ---- encode (writes from the gateway; register images for simulators) --------------------

def _words(p, v, mname, pn):
    # point value -> raw words/bits (no access or bounds check); list
    ty = p["type"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise RegMapError("%s: %s value %r is not an integer" % (mname, pn, v))
    if ty == "cmdmag":
        if v == 0:
            return [p["zero"], 0]
        mag = _scale_out(p, v if v > 0 else -v)
        if mag > 0xFFFF:
            raise RegMapError("%s: %s magnitude %d exceeds 65535" % (mname, pn, mag))
        return [p["pos"] if v > 0 else p["neg"], mag]
    if ty == "f32":
        num = (v - p.get("offset", 0)) * p.get("div", 1)
        d = p.get("mul", 1)
        if d < 0:
            num, d = -num, -d
        hi, lo = scaled_to_f32(num, d)
        return [lo, hi] if p.get("lo") else [hi, lo]
    vs = p.get("values")
    if vs:
        raw = None
        for val, r in vs:
            if val == v:
                raw = r
                break
        if raw is None:
            raise RegMapError("%s: %s value %d not one of %s" % (mname, pn, v, [e[0] for e in vs]))
    elif ty == "bit":
        if v not in (0, 1):
            raise RegMapError("%s: %s must be 0 or 1, got %d" % (mname, pn, v))
        raw = v
    else:
        raw = _scale_out(p, v)
    pk = p.get("pick")
    if pk:
        if raw < 0 or raw >> len(pk):
            raise RegMapError("%s: %s value %d has bits beyond its %d names" % (mname, pn, v, len(pk)))
        r = 0
        for i in range(len(pk)):
            if (raw >> i) & 1:
                r |= 1 << pk[i]
        raw = r
    if ty in ("bit", "bits"):
        if ty == "bits" and not pk and (raw < 0 or raw >> p["n"]):
            raise RegMapError("%s: %s value %d does not fit %d bits" % (mname, pn, v, p["n"]))
        return [(raw >> i) & 1 for i in range(p["n"])]
    n = p["n"]
    # fits n words: judged by shifting raw, never building 2**31 / 2**32 (long on 32-bit)
    top = raw >> (16 * n - 1) if ty[0] == "s" else raw >> (16 * n)
    if top != 0 and (top != -1 or ty[0] != "s"):
        raise RegMapError("%s: %s value %d (raw %d) does not fit %s" % (mname, pn, v, raw, ty))
    if n == 1:
        return [raw & 0xFFFF]
    hi = (raw >> 16) & 0xFFFF
    lo = raw & 0xFFFF
    return [lo, hi] if p.get("lo") else [hi, lo]


def encode_point(m, name, value, image=None):
    """Any point -> (table, addr, words or bits): what a simulated device holds.
    For bitfields with a pick list, the bits the point does not own come from image
    (dict addr -> current word/bit of that table; 0 when absent), so points that share
    registers (Seplos alarm/protect) can be written one after the other."""
    p = m.points.get(name)
    if p is None:
        raise RegMapError("%s: unknown point %r" % (m.name, name), 2)
    if "sf" in p:  # the scale factor the device shows now (0 until it is set)
        sp = m.points[p["sf"]]
        sf = (image or {}).get(sp["addr"], 0)
        p = _sf_point(p, sf - 0x10000 if sf & 0x8000 else sf)
        if p is None:
            raise RegMapError("%s: %s scale factor %d outside -10..10" % (m.name, name, sf))
    w = _words(p, value, m.name, name)
    pk = p.get("pick")
    if pk:
        a = p["addr"]
        g = image.get if image is not None else (lambda k, d: d)
        if p["table"] in ("coil", "discrete"):
            own = {}
            for b in pk:
                own[b] = 1
            w = [w[i] if i in own else (1 if g(a + i, 0) else 0) for i in range(len(w))]
        else:
            mask = 0
            for b in pk:
                mask |= 1 << b
            n = len(w)
            for i in range(n):
                # word i of the point holds raw bits (n-1-i)*16.. (hi first) or i*16.. (lo first)
                sh = 16 * i if p.get("lo") or n == 1 else 16 * (n - 1 - i)
                wm = (mask >> sh) & 0xFFFF
                w[i] = (w[i] & wm) | (g(a + i, 0) & ~wm & 0xFFFF)
    return p["table"], p["addr"], w


def _check_write(m, name, p, value):
    if p["access"] == "r":
        raise RegMapError("%s: point %s is read-only" % (m.name, name), 2)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RegMapError("%s: %s value %r is not an integer" % (m.name, name, value))
    if ("min" in p and value < p["min"]) or ("max" in p and value > p["max"]):
        raise RegMapError("%s: %s value %d outside %s..%s" % (
            m.name, name, value, p.get("min", "-"), p.get("max", "-")))


def encode_write(m, name, value):
    """Writes setting point name to value: [(fc, addr, values_list), ...] in the order to
    send. RegMapError if the point is unknown, read-only or value out of bounds."""
    p = m.points.get(name)
    if p is None:
        raise RegMapError("%s: unknown point %r" % (m.name, name), 2)
    _check_write(m, name, p, value)
    w = _words(p, value, m.name, name)
    a = p["addr"]
    if p["table"] == "coil":
        return [(5, a, w)] if len(w) == 1 else [(15, a, w)]
    if p["table"] != "holding":
        raise RegMapError("%s: point %s is in the %s table, not writable" % (m.name, name, p["table"]), 2)
    if p["type"] == "cmdmag":
        # mode registers first, then the magnitude, then the command: a device that was
        # stopped never runs with a stale magnitude
        out = [(6, pa, [pr]) for pa, pr in p["pre"]]
        out.append((6, a + 1, [w[1]]))
        out.append((6, a, [w[0]]))
        return out
    if len(w) == 1 and m.write_fc == 6:
        return [(6, a, w)]
    return [(16, a, w)]


def decode_write(m, fc, addr, values, regs=None):
    """Simulator side: a write request -> {name: int} of the points it sets. Points only
    partly covered are completed from regs (dict addr -> current word/bit of that table)
    when given, else left out. RegMapError(code 2) for addresses no writable point owns or
    read-only points, (code 3) for values out of bounds."""
    t = FC_TABLE.get(fc)
    if fc not in (5, 6, 15, 16):
        raise RegMapError("decode_write: fc %r is not a write function" % (fc,))
    if fc in (5, 6) and not isinstance(values, (list, tuple)):
        values = [values]
    n = len(values)
    end = addr + n
    lst = m._idx.get(t) or ()
    out = {}
    # per-point: assemble its words from the frame and, for missing parts, regs
    for pn in lst:
        p = m.points[pn]
        a = p["addr"]
        pn_n = p["n"]
        if a >= end or a + pn_n <= addr:
            continue
        if p["access"] == "r":
            raise RegMapError("%s: point %s is read-only" % (m.name, pn), 2)
        data = []
        ok = True
        for i in range(a, a + pn_n):
            if addr <= i < end:
                data.append(values[i - addr])
            elif regs is not None and i in regs:
                data.append(regs[i])
            else:
                ok = False
                break
        if not ok:
            if p["type"] == "cmdmag" and addr <= a < end and values[a - addr] == p["zero"]:
                out[pn] = 0  # a stop command needs no magnitude
            continue
        v = _value(p, data, 0)
        if v is None:
            raise RegMapError("%s: %s raw %r is not a valid value" % (m.name, pn, data))
        if ("min" in p and v < p["min"]) or ("max" in p and v > p["max"]):
            raise RegMapError("%s: %s value %d outside %s..%s" % (
                m.name, pn, v, p.get("min", "-"), p.get("max", "-")))
        out[pn] = v
    for i in range(addr, end):  # a real device refuses writes to registers it lacks
        own = False
        for pn in lst:
            a = m.points[pn]["addr"]
            if a <= i < a + m.points[pn]["n"]:
                own = True
                break
        if not own:
            raise RegMapError("%s: no writable point at %s address %d" % (m.name, t, i), 2)
    return out
