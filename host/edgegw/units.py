"""Human units for decoded points: the one place that turns a point's integer (in the unit
its name's suffix gives, docs/regmap-format.md) into what a technician reads.

`trace decode`, `read`, `scan` and `status` show `human(name, value)` by default
(`83.20 %`, `53.25 V`, `-1.37 A`) and the raw integer with `--raw` / `--json`.
Exact decimal formatting from the integer (no float rounding surprises)."""

# suffix -> (decimals, unit text). The integer is value * 10**-decimals in that unit.
SUFFIXES = {
    "w": (0, "W"),
    "wh": (0, "Wh"),
    "kwh": (0, "kWh"),
    "var": (0, "var"),
    "va": (0, "VA"),
    "dv": (1, "V"),
    "cv": (2, "V"),
    "mv": (3, "V"),
    "ma": (3, "A"),
    "ca": (2, "A"),
    "dc": (1, "°C"),
    "cdc": (2, "°C"),
    "chz": (2, "Hz"),
    "cpct": (2, "%"),
    "dpct": (1, "%"),
    "milli": (3, ""),
    "cah": (2, "Ah"),
    "s": (0, "s"),
    "ms": (0, "ms"),
}


def suffix(name):
    """The unit suffix of a point name ('' when it has none)."""
    i = name.rfind("_")
    if i < 0:
        return ""
    s = name[i + 1:]
    return s if s in SUFFIXES else ""


def scale(name):
    """(decimals, unit text) of a point name; (0, '') for counts, codes and bitfields."""
    return SUFFIXES.get(suffix(name), (0, ""))


def fixed(value, decimals):
    """An integer in 10**-decimals units as an exact decimal string: fixed(-137, 2) = '-1.37'."""
    if not isinstance(value, int) or isinstance(value, bool) or decimals <= 0:
        return str(value)
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(value), 10 ** decimals)
    return "%s%d.%0*d" % (sign, q, decimals, r)


def human(name, value):
    """'83.20 %' for ('soc_cpct', 8320); non-integers and unitless points as they are."""
    if not isinstance(value, int) or isinstance(value, bool):
        return str(value)
    dec, unit = scale(name)
    text = fixed(value, dec)
    return "%s %s" % (text, unit) if unit else text


def value(name, v):
    """The number a person reads, as a float (plots, JSON with --human)."""
    dec, _ = scale(name)
    return v / 10 ** dec if dec else v
