"""`edgegw scan`: find the slaves on a line and what they are, and propose the `buses` /
`devices` of a gateway config (docs/config.md) for them.

Per address: one liveness probe (holding 40000, then input 0), each a bounded wait, so a
silent address costs (1 + retries) x timeout twice. A device that answers is identified by
 - the SunSpec marker "SunS" at holding 40000, 0 or 50000, then its model chain and the
   common model's manufacturer/model strings (SunSpec Information Model);
 - else the shipped maps, tried through the maps themselves: the planned read of a few
   points each map has, which must answer without an exception and read plausibly
   (mains frequency 45..65 Hz, a state code, a SOC 0..100 %). The meters' manuals (and
   /work/shared/reference) give no model register, so this is by value, and says so."""
import json
import os

import click

from edgegw.cli import UserError
from edgegw.cmd_read import Master

SUNS = (0x5375, 0x6E53)
SUNSPEC_BASES = (40000, 0, 50000)
# SunSpec model ids -> the shipped map and role for that kind of device
SUNSPEC_PV = (101, 102, 103, 111, 112, 113, 120, 121, 122, 123)
SUNSPEC_PCS = (124, 701, 702, 703, 704, 705, 802, 803, 804)
MAX_MODELS = 40   # a chain longer than this is not followed further


def _hz(v):
    return v.get("f_chz") is not None and 4500 <= v["f_chz"] <= 6500


def _three_phase(v):
    return _hz(v) and (v.get("u2_dv") or 0) > 0 and (v.get("u3_dv") or 0) > 0


def _state(v):
    return v.get("state") in (1, 2, 3, 4, 5, 6, 7, 8)


def _bms(v):
    return 0 <= v.get("soc_cpct", -1) <= 10000 and v.get("v_cv", 0) > 0


def _sungrow(v):
    return 0 <= v.get("soc_cpct", -1) <= 10000 and "state" in v


# (map, role, points read, plausible(values), what it says): first match wins, so a
# three-phase check comes before the single-phase meter answering the same registers
CANDIDATES = (
    ("sdm630", "meter", ("u1_dv", "u2_dv", "u3_dv", "f_chz"), _three_phase,
     "Eastron SDM630 layout: FC04 frequency and three phase voltages"),
    ("sdm120", "meter", ("u1_dv", "f_chz"), _hz, "Eastron SDM120 layout: FC04 frequency"),
    ("dtsu666", "meter", ("u1_dv", "u2_dv", "u3_dv", "f_chz"), _hz,
     "CHINT DTSU666 layout: FC03 0x2044 frequency"),
    ("dtsd1352", "meter", ("f_chz", "pt_ratio", "ct_ratio"), _hz,
     "Acrel DTSD1352 layout: FC03 0x0077 frequency"),
    ("seplos_v3", "bms", ("v_cv", "soc_cpct"), _bms, "Seplos V3 layout: FC04 pack voltage, SOC"),
    ("sungrow_sh", "pcs", ("soc_cpct", "state"), _sungrow, "Sungrow SH layout: input SOC, state"),
    ("sunspec_pv", "pv_inverter", ("state", "wmax_w"), _state,
     "flat SunSpec-style PV layout at 40000: state code"),
    ("sunspec_pcs", "pcs", ("state", "p_rated_w"), _state,
     "flat SunSpec-style PCS layout at 40000: state code"),
)
SINGLE = ("bms", "pcs", "grid_meter", "pv_inverter")


def parse_slaves(text):
    """'1-247', '1,3,10-12' -> sorted addresses; UserError naming the option."""
    out = set()
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            lo = int(a)
            hi = int(b) if b else lo
            if not 1 <= lo <= hi <= 247:
                raise ValueError
            out.update(range(lo, hi + 1))
    except ValueError:
        raise UserError("--slaves %r: give addresses 1..247 like 1-247 or 1,3,10-12" % text)
    return sorted(out)


def _text(words):
    b = b"".join(bytes((w >> 8, w & 0xFF)) for w in words)
    return b.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def sunspec(master, slave):
    """{base, models, mn, md} of a SunSpec device, or None when no marker answers."""
    for base in SUNSPEC_BASES:
        rsp, _ = master.transact(slave, 3, base, 2)
        if rsp is None or rsp.exc or tuple(rsp.values) != SUNS:
            continue
        found = {"base": base, "models": [], "mn": "", "md": ""}
        a = base + 2
        for _ in range(MAX_MODELS):
            rsp, _ = master.transact(slave, 3, a, 2)
            if rsp is None or rsp.exc or rsp.values[0] in (0xFFFF, 0):
                break
            mid, ln = rsp.values
            found["models"].append(mid)
            if mid == 1 and ln >= 32:  # common model: Mn, Md (16 registers each)
                r2, _ = master.transact(slave, 3, a + 2, 32)
                if r2 is not None and not r2.exc:
                    found["mn"] = _text(r2.values[:16])
                    found["md"] = _text(r2.values[16:])
            a += 2 + ln
            if a > 0xFFFF - 2:
                break
        return found
    return None


def by_map(master, slave):
    """(map, role, why, values) of the first shipped map that reads plausibly, or None."""
    from edgegw.cmd_read import DeviceError, read_once
    from protocols import regmap
    for name, role, pts, ok, why in CANDIDATES:
        m = regmap.load(name)
        try:
            vals = read_once(master, slave, m, regmap.plan(m, list(pts)))
        except DeviceError:
            continue
        if ok(vals):
            return name, role, why, dict((k, vals[k]) for k in pts if k in vals)
    return None


def alive(master, slave):
    for fc, addr in ((3, 40000), (4, 0)):
        rsp, why = master.transact(slave, fc, addr, 2)
        if rsp is not None or why == "garbled":
            return True
    return False


def probe(master, slave):
    """A dict describing what answers at this address, or None for silence."""
    if not alive(master, slave):
        return None
    ss = sunspec(master, slave)
    if ss is not None:
        ms = ss["models"]
        kind = (None, None)
        if any(x in SUNSPEC_PCS for x in ms):
            kind = ("sunspec_pcs", "pcs")
        elif any(x in SUNSPEC_PV for x in ms):
            kind = ("sunspec_pv", "pv_inverter")
        return {"slave": slave, "map": kind[0], "role": kind[1], "sunspec": ss,
                "why": "SunSpec marker at %d, models %s%s" % (
                    ss["base"], ", ".join(str(x) for x in ms) or "none",
                    "; %s %s" % (ss["mn"], ss["md"]) if ss["mn"] or ss["md"] else "")}
    hit = by_map(master, slave)
    if hit is None:
        return {"slave": slave, "map": None, "role": None, "why": "answers, matches no shipped map"}
    name, role, why, vals = hit
    from edgegw import units
    shown = ", ".join("%s %s" % (k, units.human(k, v)) for k, v in vals.items())
    return {"slave": slave, "map": name, "role": role, "why": "%s (%s)" % (why, shown)}


def propose(found, bus, gw_port, baud, parity):
    """A config with the bus and one device per identified slave (roles: the first meter is
    the grid meter, the others aux meters; a second bms/pcs/pv inverter is left out)."""
    devs = []
    used = set()
    notes = []
    for f in found:
        if not f["map"]:
            notes.append("slave %d: %s (not proposed)" % (f["slave"], f["why"]))
            continue
        role = f["role"]
        if role == "meter":
            role = "grid_meter" if "grid_meter" not in used else "aux_meter"
        if role in SINGLE and role in used:
            notes.append("slave %d: a second %s (%s), not proposed" % (f["slave"], role, f["map"]))
            continue
        used.add(role)
        if f.get("sunspec"):
            notes.append("slave %d: SunSpec device; map %s is a flat layout at 40000, check its "
                         "addresses against this device's model chain (edgegw read)"
                         % (f["slave"], f["map"]))
        name = role if role in SINGLE else "%s_%d" % (role.split("_")[0], f["slave"])
        devs.append({"name": name, "role": role, "map": f["map"], "slave": f["slave"],
                     "bus": bus})
    cfg = {"buses": [{"name": bus, "port": gw_port, "baud": baud, "parity": parity}],
           "devices": devs}
    if notes:
        cfg["note"] = "edgegw scan: " + "; ".join(notes)
    return cfg


@click.command("scan")
@click.option("--port", "-p", required=True,
              help="pyserial URL: /dev/ttyUSB0, COM3, socket://h:p, rfc2217://h:p")
@click.option("--slaves", default="1-247", show_default=True, help="Addresses, e.g. 1-10,20.")
@click.option("--baud", "-b", default=9600, show_default=True, type=click.IntRange(300, 4000000))
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--timeout", "timeout_ms", default=300, show_default=True,
              type=click.IntRange(10, 10000), help="Wait per try for an answer (ms).")
@click.option("--retries", default=0, show_default=True, type=click.IntRange(0, 5))
@click.option("--bus", default="bus0", show_default=True, help="Bus name in the proposed config.")
@click.option("--gateway-port", default="uart1", show_default=True,
              help="The gateway's port for this line in the proposed config.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the proposed config.")
@click.option("--json", "as_json", is_flag=True, help="Print only the proposed config (JSON).")
def cli(port, slaves, baud, parity, timeout_ms, retries, bus, gateway_port, out, as_json):
    """Probe slave addresses, identify the devices, propose a config.

    \b
    edgegw scan --port /dev/ttyUSB0 --slaves 1-20
    edgegw scan -p /dev/ttyUSB0 -b 19200 --slaves 1-5 --out site.json
    edgegw config validate site.json
    """
    addrs = parse_slaves(slaves)
    if out and os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
        raise UserError("--out %s: folder %s does not exist" % (out, os.path.dirname(out)))
    master = Master(port, baud, parity, timeout_ms, retries)
    found = []
    try:
        if not as_json:
            click.echo("scanning %s, slaves %s (%d ms x %d per probe)"
                       % (master.line(), slaves, timeout_ms, 1 + retries), err=True)
        for s in addrs:
            f = probe(master, s)
            if f is None:
                continue
            found.append(f)
            if not as_json:
                click.echo("slave %d: %s%s" % (s, f["why"], " -> %s" % f["map"] if f["map"] else ""))
    except KeyboardInterrupt:
        click.echo("scan stopped", err=True)
    finally:
        master.close()
    cfg = propose(found, bus, gateway_port, baud, parity)
    text = json.dumps(cfg, indent=2) + "\n"
    if out:
        try:
            with open(out, "w") as f:
                f.write(text)
        except OSError as e:
            raise UserError("--out %s: cannot write (%s)" % (out, e.strerror))
    if as_json:
        click.echo(text, nl=False)
        return
    click.echo("%d of %d addresses answered%s" % (len(found), len(addrs),
                                                 "; proposed config:" if not out else
                                                 "; proposed config written to " + out))
    if not out:
        click.echo(text, nl=False)
    if not found:
        click.echo("nothing answered: check the wiring (A/B swapped?), the baud rate and "
                   "parity, and the bus termination", err=True)
        raise SystemExit(1)
