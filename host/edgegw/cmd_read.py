"""`edgegw read`: read one device from a laptop (like mbpoll / modpoll) through a USB-RS485
adapter or any pyserial URL, using the shared register maps: the map's planned reads, decoded
by protocols/regmap.py, shown in human units (edgegw/units.py), integers with --raw/--json.

Also the small Modbus RTU master `Master` that `edgegw scan` uses: one request at a time,
a bounded wait per try, a fixed number of retries."""
import json
import signal
import sys
import time

import click

from edgegw.cli import UserError
from protocols import modbus_rtu as rtu

CHECK = ("check the wiring (A/B swapped?), the baud rate and parity (--baud, --parity), "
         "the slave address (--slave) and the bus termination")


class DeviceError(click.ClickException):
    """The device did not answer or refused: one line saying what to check, exit 1."""
    exit_code = 1


class Master:
    """Modbus RTU requests over a pyserial port. transact() gives (Response, None) or
    (None, why) with why "timeout" (nothing came back) or "garbled" (CRC / framing)."""

    def __init__(self, url, baud=9600, parity="N", timeout_ms=500, retries=1):
        from edgegw.cmd_trace import _open_port  # one way to open a port (UserError if not)
        self.url = url
        self.baud = baud
        self.parity = parity
        self.timeout_s = timeout_ms / 1000.0
        self.retries = retries
        self.ser = _open_port(url, baud, parity)
        self.ser.timeout = 0.05  # one read call waits at most this long past the deadline
        self.char_s = rtu.char_us(baud) / 1e6

    def close(self):
        try:
            self.ser.close()
        except OSError:      # unplugged: nothing left to close
            pass

    def line(self):
        return "%s at %d 8%s1" % (self.url, self.baud, self.parity)

    def transact(self, slave, fc, addr, qty):
        frame = rtu.encode_request(slave, fc, addr, qty)
        req = rtu.Request(slave, fc, addr, qty)
        why = "timeout"
        for _ in range(1 + self.retries):
            rsp, w = self._once(frame, req)
            if rsp is not None:
                return rsp, None
            if w == "garbled":
                why = w
        return None, why

    def _once(self, frame, req):
        self._drain()
        self.ser.write(frame)
        # the wait counts from the request leaving, plus the longest answer's wire time
        wire = (len(frame) + rtu.response_len_for(req.fc, req.qty)) * self.char_s
        deadline = time.monotonic() + self.timeout_s + wire
        buf = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, "garbled" if buf else "timeout"
            d = self.ser.read(max(1, self.ser.in_waiting))
            if d:
                buf.extend(d)
                try:
                    n = rtu.response_len(buf)
                except rtu.ModbusError:
                    return None, "garbled"
                if n and len(buf) >= n:
                    try:
                        return rtu.decode_response(bytes(buf[:n]), req), None
                    except rtu.ModbusError:
                        return None, "garbled"

    def _drain(self):
        # bytes left over from an earlier late answer would be taken for this one
        for _ in range(64):  # bounded: a line full of noise must not hold us here
            n = self.ser.in_waiting
            if not n:
                return
            self.ser.read(n)


def parse_map(name):
    from protocols import regmap
    try:
        return regmap.load(name)
    except regmap.RegMapError as e:
        raise UserError("--map %s: %s" % (name, e))


def read_once(master, slave, m, reads):
    """{point: int} of one pass over the planned reads; DeviceError on silence/exception."""
    from protocols import regmap
    vals = {}
    for fc, addr, qty in reads:
        rsp, why = master.transact(slave, fc, addr, qty)
        where = "%s %d x%d" % (regmap.FC_TABLE[fc], addr, qty)
        if rsp is None:
            tries = "%d tr%s of %d ms" % (1 + master.retries, "y" if not master.retries else "ies",
                                          round(master.timeout_s * 1000))
            if why == "garbled":
                raise DeviceError("slave %d on %s answers garbled frames (CRC/framing) to read %s: "
                                  "check the baud rate and parity, the bus termination and "
                                  "grounding, and that only one master is on the line"
                                  % (slave, master.line(), where))
            raise DeviceError("no answer from slave %d on %s to read %s (%s): %s"
                              % (slave, master.line(), where, tries, CHECK))
        if rsp.exc:
            raise DeviceError("slave %d answered exception %d (%s) to read %s (map %s): check "
                              "the map (and its variant) is the one for this device"
                              % (slave, rsp.exc, rtu.EXC_NAMES.get(rsp.exc, "unknown"), where,
                                 m.name))
        vals.update(regmap.decode(m, fc, addr, rsp.values))
    return vals


def _show(m, name, v, raw):
    from edgegw import units
    from protocols import regmap
    if raw:
        return str(v)
    bits = m.points[name].get("bits")
    if bits and isinstance(v, int) and v >= 0:
        names = regmap.bit_names(m, name, v)
        return "0x%04X%s" % (v, " (%s)" % ", ".join(names) if names else "")
    return units.human(name, v)


def _stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def emit(m, slave, names, vals, as_json, raw, t):
    want = names
    if names is not None:  # and the scale factors they were read with
        want = list(names) + [m.points[n]["sf"] for n in names if "sf" in m.points[n]]
    order = [n for n in m.points if n in vals and (want is None or n in want)]
    # read but without a valid value: NaN, an unknown code, a scale factor unknown
    missing = [n for n in (names or m.points) if n not in vals and m.points[n]["access"] != "w"]
    if as_json:
        click.echo(json.dumps({"t": _stamp(t), "slave": slave, "map": m.name,
                               "values": {n: vals[n] for n in order}, "missing": missing}))
        return
    click.echo("# %s slave %d %s" % (_stamp(t), slave, m.name))
    w = max([len(n) for n in order + missing] or [1])
    for n in order:
        click.echo("%-*s  %s" % (w, n, _show(m, n, vals[n], raw)))
    for n in missing:
        sf = m.points[n].get("sf")
        click.echo("%-*s  -  (%s)" % (w, n, "scale factor %s not valid" % sf if sf
                                      else "no valid value"))


class _Stop(Exception):
    pass


@click.command("read")
@click.option("--port", "-p", required=True,
              help="pyserial URL: /dev/ttyUSB0, COM3, socket://h:p, rfc2217://h:p")
@click.option("--slave", "-s", required=True, type=click.IntRange(1, 247), help="Slave address.")
@click.option("--map", "map_name", required=True, metavar="MAP",
              help="Register map name (sdm630, dtsu666@v4000) or a .json path.")
@click.option("--point", "points", multiple=True, metavar="P",
              help="Read only this point (repeatable); default every point of the map.")
@click.option("--watch", type=click.FloatRange(0.1, 86400), metavar="S",
              help="Read again every S seconds until Ctrl-C.")
@click.option("--count", type=click.IntRange(1, None), help="With --watch: stop after N reads.")
@click.option("--baud", "-b", default=9600, show_default=True, type=click.IntRange(300, 4000000))
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--timeout", "timeout_ms", default=500, show_default=True,
              type=click.IntRange(10, 10000), help="Wait per try for an answer (ms).")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(0, 10),
              help="Extra tries per request before giving up.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (integers) per read.")
@click.option("--raw", is_flag=True, help="Integers in the map's units instead of 83.20 %.")
def cli(port, slave, map_name, points, watch, count, baud, parity, timeout_ms, retries,
        as_json, raw):
    """Read one device's points and print them in human units.

    \b
    edgegw read --port /dev/ttyUSB0 --slave 1 --map sdm630
    edgegw read -p /dev/ttyUSB0 -s 1 --map seplos_v3 -b 19200 --point soc_cpct --watch 2
    edgegw read -p socket://10.0.0.7:4001 -s 3 --map sunspec_pv --json
    """
    from protocols import regmap
    if count and not watch:
        raise UserError("--count needs --watch")
    m = parse_map(map_name)
    names = list(points) or None
    try:
        reads = regmap.plan(m, names)
    except regmap.RegMapError as e:
        raise UserError("--point: %s (known: %s)" % (e, ", ".join(m.points)))
    if not reads:
        raise UserError("--point: nothing to read (write-only points)")
    master = Master(port, baud, parity, timeout_ms, retries)

    def on_term(signum, frame):
        raise _Stop()
    old = signal.signal(signal.SIGTERM, on_term)
    n = 0
    ok = True
    try:
        while True:
            t = time.time()
            try:
                vals = read_once(master, slave, m, reads)
                ok = True
                emit(m, slave, names, vals, as_json, raw, t)
            except DeviceError as e:
                if not watch:
                    raise
                ok = False
                click.echo("Error: " + e.message, err=True)
            n += 1
            if not watch or (count and n >= count):
                break
            time.sleep(max(0.0, t + watch - time.time()))
    except (KeyboardInterrupt, _Stop):
        click.echo("stopped after %d read(s)" % n, err=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        master.close()
    if not ok:
        sys.exit(1)
