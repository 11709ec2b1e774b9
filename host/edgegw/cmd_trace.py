"""`edgegw trace capture|decode|stats|export`: record an RS-485 bus and make sense of it.

capture: any pyserial URL (/dev/ttyUSB0, COM3, rfc2217://, socket://, loop://), host
timestamps, silence-based framing (protocols.modbus_rtu.Framer), each frame written and
flushed as it closes: Ctrl-C or SIGTERM lose nothing. Output: the JSON Lines trace format
(protocols/trace.py, docs/trace-format.md). decode/stats/export read that format or the
dotted-hex captures (>>> / <<< lines) of ../shared/reference/traces/."""
import csv
import json
import signal
import sys
import time

import click

from edgegw.cli import UserError
from protocols import modbus_rtu as rtu

FLAG_NAMES = ((rtu.F_CRC, "crc"), (rtu.F_GAP, "gap"), (rtu.F_LEN, "len"), (rtu.F_SHORT, "short"))


# ---- capture ------------------------------------------------------------------------------

class Classifier:
    """Tells requests from responses on a tapped bus: a frame that answers the pending
    request (same slave, same function, right shape) is its response; otherwise a valid
    request is a request; else a response; else junk. (FC5/6 echoes are byte-identical to
    their requests: only the order tells them apart.)"""

    def __init__(self):
        self.pending = None

    def __call__(self, frame, flags):
        if flags & (rtu.F_CRC | rtu.F_SHORT):
            # a damaged frame: keep the order (a garbled response still ends the exchange)
            if self.pending is not None and len(frame) >= 2 and frame[0] == self.pending.slave:
                self.pending = None
                return "rsp"
            return "junk"
        if self.pending is not None:
            try:
                rtu.decode_response(frame, self.pending)
                self.pending = None
                return "rsp"
            except rtu.ModbusError:
                pass
        try:
            self.pending = rtu.decode_request(frame)
            return "req"
        except rtu.ModbusError:
            pass
        try:
            rtu.decode_response(frame)
            self.pending = None
            return "rsp"
        except rtu.ModbusError:
            return "junk"


def flag_list(flags):
    return [n for bit, n in FLAG_NAMES if flags & bit]


class Capture:
    """Frames a byte stream and writes trace records; usable without a port (feed()).

    Every chunk is stamped with its arrival time on one monotonic clock (feed(chunk, t_us));
    a frame's t0_us is when its first byte arrived and t_us when its last did, so the
    latency decode reports (response start - request end) is what the tap saw and never
    negative, and records come out in arrival order. paced: the port is a UART, whose
    chunk's last byte arrives (n - 1) character times after its first; on a pty or TCP
    stream (paced False) a chunk's bytes arrive together. A silence of t3.5 closes a frame;
    frames glued together without one (a fast responder on a stream) are cut by the length
    the pending request calls for, or split by predicted lengths and CRC."""

    def __init__(self, writer, baud, bus="bus0", paced=False):
        self.w = writer
        self.bus = bus
        self.t35 = rtu.silence_us(baud)
        self.char = rtu.char_us(baud)
        self.step = self.char if paced else 0
        self.cls = Classifier()
        self.buf = bytearray()
        self.marks = []        # [(offset in buf, arrival of that byte)] one per chunk
        self.last = None       # arrival of the newest byte
        self.frames = 0
        self.crc = 0
        self.nbytes = 0

    def _t(self, i):
        """Arrival time of buf[i]."""
        k = len(self.marks) - 1
        while self.marks[k][0] > i:
            k -= 1
        off, t = self.marks[k]
        return t + (i - off) * self.step

    def _take(self, n):
        """(bytes, t0, t1) of the first n buffered bytes, removed from the buffer."""
        t0, t1 = self._t(0), self._t(n - 1)
        rest = self._t(n) if len(self.buf) > n else None
        frame = bytes(self.buf[:n])
        del self.buf[:n]
        marks = [(off - n, t) for off, t in self.marks if off > n]
        if rest is not None:
            marks.insert(0, (0, rest))
        self.marks = marks
        return frame, t0, t1

    def feed(self, chunk, now):
        if not chunk:
            return
        self.nbytes += len(chunk)
        first = now - (len(chunk) - 1) * self.step
        if self.last is not None and first < self.last:
            first = self.last          # one clock: arrivals never go back
        if self.buf and first - self.last >= self.t35:
            self._close(rtu.F_GAP)
        self.marks.append((len(self.buf), first))
        self.buf.extend(chunk)
        self.last = first + (len(chunk) - 1) * self.step
        self._arm()

    def poll(self, now):
        """No bytes arrived by now: a silence of t3.5 closes the pending frame."""
        if self.buf and now - self.last >= self.t35:
            self._close(rtu.F_GAP)

    def close(self):
        if self.buf:
            self._close(rtu.F_GAP)   # the frame being received when stopped is written too

    def _close(self, flag):
        frame = bytes(self.buf)
        if len(frame) > 8 and not rtu.check_crc(frame) and self._split(frame):
            return
        frame, t0, t1 = self._take(len(frame))
        if len(frame) < 4:
            flag |= rtu.F_SHORT | rtu.F_CRC
        elif not rtu.check_crc(frame):
            flag |= rtu.F_CRC
        self._emit(frame, flag, t0, t1)

    def _split(self, frame):
        """A bad frame that is really several good ones without silence between them:
        split by predicted lengths and CRC; each part keeps the arrival times of its bytes."""
        parts = list(rtu.split_stream(frame, self.cls.pending is None))
        if len(parts) < 2 or any(k == "junk" for _, k in parts):
            return False
        for part, _ in parts:
            f, t0, t1 = self._take(len(part))
            self._emit(f, rtu.F_LEN, t0, t1)
        return True

    def _emit(self, frame, flags, t0, t1):
        d = self.cls(frame, flags)
        self.w.write({"t_us": max(0, t1), "t0_us": max(0, t0), "bus": self.bus, "dir": d,
                      "hex": frame.hex(), "flags": flag_list(flags)})
        self.frames += 1
        if flags & rtu.F_CRC:
            self.crc += 1

    def _arm(self):
        """A response glued to the next frame (no silence between them, as on a pty) is cut
        at the length its request calls for, if that much of the buffer is a good frame.
        (Only with bytes beyond it: a frame complete and alone waits for its silence, and
        a request left unanswered is never cut short.)"""
        while True:
            q = self.cls.pending
            b = self.buf
            if q is None or len(b) < 5 or b[0] != q.slave:
                return
            if (b[1] & 0x80) and rtu.check_crc(b[:5]):
                n = 5
            else:
                n = q.response_len()
                if len(b) < n or not rtu.check_crc(b[:n]):
                    return
            if len(b) <= n:
                return
            frame, t0, t1 = self._take(n)
            self._emit(frame, rtu.F_LEN, t0, t1)


def _paced(url):
    """A UART paces bytes at the baud rate; ptys and network streams deliver them at once."""
    from edgegw.replayer import timing_for
    return timing_for(url) == "wire"


def _open_port(url, baud, parity):
    import serial
    try:
        return serial.serial_for_url(url, baudrate=baud, parity=parity, timeout=0)
    except (serial.SerialException, ValueError, OSError) as e:
        raise UserError("--port %s: cannot open it (%s). Check the path/URL, e.g. /dev/ttyUSB0,"
                        " socket://host:port, rfc2217://host:port, loop://" % (url, e))


class _Stop(Exception):
    pass


def capture(ser, writer, baud, bus="bus0", duration=None, max_frames=None, stop=None,
            paced=False, clock_us=None, cap=None):
    """Read until Ctrl-C / SIGTERM / duration / max_frames / stop(); returns the Capture.
    Bytes are stamped when the read that got them returns, on one monotonic clock
    (clock_us, default time.monotonic_ns() // 1000). cap: a Capture to feed instead of a
    new one (a test feeding the port watches cap.nbytes)."""
    if cap is None:
        cap = Capture(writer, baud, bus, paced)
    if clock_us is None:
        def clock_us():
            return time.monotonic_ns() // 1000
    t0 = clock_us()
    try:
        fd = ser.fileno()
    except Exception:
        fd = None
    poll_s = min(rtu.silence_us(baud) / 2e6, 0.002)
    import select
    try:
        while True:
            if fd is not None:
                r, _, _ = select.select([fd], [], [], poll_s)
                data = ser.read(ser.in_waiting or 1) if r else b""
            else:
                n = ser.in_waiting
                data = ser.read(n) if n else b""
                if not data:
                    time.sleep(poll_s)
            now = clock_us() - t0
            if data:
                cap.feed(data, now)
            else:
                cap.poll(now)
            if duration is not None and now >= duration * 1e6:
                break
            if max_frames is not None and cap.frames >= max_frames:
                break
            if stop is not None and stop():
                break
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        cap.close()   # the frame being received when stopped is written too
    return cap


class _LineWriter:
    """Writes records through protocols.trace.Writer and flushes each one to the OS."""

    def __init__(self, f, header):
        from protocols import trace
        self.f = f
        self.w = trace.Writer(f, header)
        f.flush()

    def write(self, rec):
        self.w.write(rec)
        self.f.flush()


# ---- reading and decoding ------------------------------------------------------------------

def read_trace(path, fmt=None, devices=None):
    """(header, records) from a JSON Lines trace or a capture without timing (dotted hex,
    0x.. bytes, a hex dump; fmt None = detect). devices (Devices): the reads their maps
    plan pair a responses-only dump by shape."""
    from edgegw.replayer import load_records
    try:
        return load_records(path, fmt, devices.reads() if devices is not None else ())
    except OSError as e:
        raise UserError("TRACE %s: cannot read (%s)" % (path, e.strerror or e))
    except ValueError as e:
        raise UserError("TRACE %s: not a trace (%s)" % (path, e))


class Devices:
    """(bus, slave) -> (device name, RegMap or None) from --map and --config."""

    def __init__(self, maps=(), config=None):
        from protocols import regmap
        self.by = {}
        if config:
            from edgefw import config as fwc
            from edgegw.cli import read_config
            cfg, errs = read_config(config, "--config")
            if cfg is None:
                raise UserError("--config %s: %s" % (config, "; ".join(errs)))
            errs = fwc.validate(cfg)
            if errs:
                raise UserError("--config %s: %s" % (config, "; ".join(errs)))
            for d in cfg["devices"]:
                self.by[(d["bus"], d["slave"])] = (d["name"], self._load(regmap, d["map"],
                                                                          "--config"))
        for spec in maps:
            try:
                key, name = spec.split("=", 1)
                bus = None
                if ":" in key:
                    bus, key = key.split(":", 1)
                slave = int(key, 0)
                if not 0 <= slave <= 255:
                    raise ValueError
            except ValueError:
                raise UserError("--map %r: use SLAVE=MAP or BUS:SLAVE=MAP, e.g. 1=seplos_v3"
                                % spec)
            m = self._load(regmap, name, "--map")
            self.by[(bus, slave)] = ("%s@%d" % (m.name, slave), m)

    @staticmethod
    def _load(regmap, name, opt):
        try:
            return regmap.load(name)
        except regmap.RegMapError as e:
            raise UserError("%s: %s" % (opt, e))

    def reads(self):
        """[(slave, fc, addr, qty)]: what a master polling these devices asks for."""
        from protocols import regmap
        out = []
        for (bus, slave), (name, m) in sorted(self.by.items(), key=lambda kv: kv[0][1]):
            if m is not None:
                out.extend((slave, fc, a, q) for fc, a, q in regmap.plan(m))
        return out

    def get(self, bus, slave):
        return self.by.get((bus, slave)) or self.by.get((None, slave)) \
            or ("slave%d" % slave, None)


def decode_records(records, devices, baud):
    """One dict per frame: t_us, dir, bus, slave, fc, device, addr, qty, values (point
    name -> int, or raw registers when no map), exc, flags, latency_us (responses)."""
    from protocols import regmap, trace
    char = rtu.char_us(baud)
    pend = {}
    out = []
    for r in records:
        d = r.get("dir")
        bus = r.get("bus", "bus0")
        flags = list(r.get("flags") or ())
        raw = bytes.fromhex(r.get("hex", ""))
        e = {"t_us": r.get("t_us", 0), "dir": d, "bus": bus, "flags": flags, "hex": r.get("hex")}
        out.append(e)
        if d == "junk" or len(raw) < 2:
            continue
        slave, fc = raw[0], raw[1] & 0x7F
        name, m = devices.get(bus, slave)
        e.update(slave=slave, fc=fc, device=name)
        if d == "req":
            try:
                q = rtu.decode_request(raw)
            except rtu.ModbusError as ex:
                e["error"] = str(ex)
                pend.pop(bus, None)
                continue
            e.update(addr=q.addr, qty=q.qty)
            pend[bus] = (q, r)
            if q.values is not None:
                e["values"] = _write_values(regmap, m, q)
            continue
        q, rq = pend.pop(bus, (None, None))
        if q is not None and (q.slave != slave or q.fc != fc):
            q = None
        if q is not None:
            # response start (t0_us, else estimated from the wire time) - request end
            lat = trace.latency_us(rq, r, char)
            if lat is not None:
                e["latency_us"] = lat
            e.update(addr=q.addr, qty=q.qty)
        try:
            p = rtu.decode_response(raw, q)
        except rtu.CRCError:
            e["error"] = "CRC"
            continue
        except rtu.ModbusError as ex:
            e["error"] = str(ex)
            continue
        if p.exc:
            e["exc"] = p.exc
            e["exc_name"] = rtu.EXC_NAMES.get(p.exc, "?")
            continue
        if fc in (1, 2, 3, 4):
            if q is None:
                e["values"] = {"raw": p.values}
            elif m is None:
                e["values"] = {"0x%04x" % (q.addr + i): v for i, v in enumerate(p.values)}
            else:
                try:
                    e["values"] = regmap.decode(m, fc, q.addr, p.values)
                except regmap.RegMapError as ex:
                    e["error"] = str(ex)
                    continue
                bits = {k: regmap.bit_names(m, k, v) for k, v in e["values"].items()
                        if m.points[k].get("bits") and v}
                if bits:
                    e["bits"] = bits   # names of the set bits of bitfields (alarms, states)
    return out


def _write_values(regmap, m, q):
    if m is None:
        return {"0x%04x" % (q.addr + i): v for i, v in enumerate(q.values)}
    try:
        return regmap.decode_write(m, q.fc, q.addr, q.values)
    except regmap.RegMapError as ex:
        return {"error": str(ex)}


def _pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(decoded):
    """Per device: requests, responses, timeouts, crc errors, exceptions, latency."""
    per = {}
    junk = 0
    waiting = {}
    for e in decoded:
        if e["dir"] == "junk" or "slave" not in e:
            junk += e["dir"] == "junk"
            continue
        key = (e["bus"], e["slave"])
        s = per.setdefault(key, {"device": e["device"], "bus": e["bus"], "slave": e["slave"],
                                 "requests": 0, "responses": 0, "timeouts": 0, "crc_errors": 0,
                                 "bad_frames": 0, "exceptions": 0, "lat": []})
        if e["dir"] == "req":
            if waiting.get(e["bus"]) is not None:
                per[waiting[e["bus"]]]["timeouts"] += 1
            s["requests"] += 1
            waiting[e["bus"]] = key
        else:
            s["responses"] += 1
            if waiting.get(e["bus"]) == key:
                waiting[e["bus"]] = None
            if e.get("error") == "CRC" or "crc" in e["flags"]:
                s["crc_errors"] += 1
            elif e.get("error"):
                s["bad_frames"] += 1   # good CRC, not a valid answer (e.g. exception code 0)
            if e.get("exc"):
                s["exceptions"] += 1
            if e.get("latency_us") is not None and e.get("error") is None:
                s["lat"].append(e["latency_us"])
    for k in waiting.values():
        if k is not None:
            per[k]["timeouts"] += 1
    out = []
    for key in sorted(per, key=lambda k: (k[0], k[1])):
        s = per[key]
        lat = s.pop("lat")
        s["latency_ms_p50"] = None if not lat else round(_pct(lat, 50) / 1000.0, 3)
        s["latency_ms_p99"] = None if not lat else round(_pct(lat, 99) / 1000.0, 3)
        s["latency_ms_max"] = None if not lat else round(max(lat) / 1000.0, 3)
        out.append(s)
    return {"devices": out, "junk_frames": junk, "frames": len(decoded)}


# ---- commands -------------------------------------------------------------------------------

@click.group()
def cli():
    """Capture, decode, summarise and export Modbus RTU bus traces.

    \b
    edgegw trace capture --port /dev/ttyUSB0 --baud 19200 --out bms.jsonl
    edgegw trace decode bms.jsonl --map 1=seplos_v3
    edgegw trace stats bms.jsonl --json
    edgegw trace export bms.jsonl --csv --map 1=seplos_v3 --out bms.csv
    """


def _baud_for(header, baud):
    if baud:
        return baud
    b = header.get("baud") if isinstance(header, dict) else None
    return b if isinstance(b, int) and b > 0 else 9600


map_opt = click.option("--map", "maps", multiple=True, metavar="[BUS:]SLAVE=MAP",
                       help="Register map for a slave (repeatable), e.g. 1=seplos_v3.")
config_opt = click.option("--config", type=click.Path(dir_okay=False),
                          help="A gateway config.json: device names and maps per bus/slave.")
tbaud_opt = click.option("--baud", type=click.IntRange(300, 4000000), default=None,
                         help="Baud rate (default: from the trace header, else 9600).")
format_opt = click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "dotted", "0x",
                                                                  "hex"]),
                          default="auto", show_default=True,
                          help="TRACE format: jsonl (edgegw trace), dotted (>>> 01.04...), 0x "
                          "(0x01 0x04 ..., responses paired with --map reads by shape), hex "
                          "(plain hex dump).")
trace_arg = click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))


@cli.command("capture")
@click.option("--port", "-p", required=True,
              help="pyserial URL: /dev/ttyUSB0, COM3, socket://h:p, rfc2217://h:p, loop://")
@click.option("--baud", "-b", default=9600, show_default=True, type=click.IntRange(300, 4000000))
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Trace file (default stdout).")
@click.option("--bus", default="bus0", show_default=True, help="Bus name in the records.")
@click.option("--duration", type=click.FloatRange(0, None), help="Stop after this many seconds.")
@click.option("--frames", "max_frames", type=click.IntRange(1, None), help="Stop after N frames.")
def capture_cmd(port, baud, parity, out, bus, duration, max_frames):
    """Record a bus to a trace until Ctrl-C (every frame is flushed as it closes)."""
    ser = _open_port(port, baud, parity)
    f = open(out, "w") if out else sys.stdout
    header = {"trace": 1, "baud": baud, "source": port, "bus": bus, "parity": parity,
              "start": round(time.time(), 3), "tool": "edgegw trace capture",
              "timing": "wire" if _paced(port) else "arrival"}
    w = _LineWriter(f, header)

    def on_term(signum, frame):
        raise _Stop()
    old = signal.signal(signal.SIGTERM, on_term)
    t0 = time.time()
    try:
        if out:
            click.echo("capturing %s at %d baud -> %s (Ctrl-C to stop)" % (port, baud, out),
                       err=True)
        cap = capture(ser, w, baud, bus, duration, max_frames, paced=_paced(port))
    finally:
        signal.signal(signal.SIGTERM, old)
        try:
            ser.close()
        except OSError:      # unplugged during the capture: what was read is kept
            pass
        f.flush()
        if out:
            f.close()
    click.echo("%d frames (%d bytes, %d CRC errors) in %.1f s"
               % (cap.frames, cap.nbytes, cap.crc, time.time() - t0), err=True)


def _fmt_values(v, raw=False, bits=None):
    """'soc_cpct=83.20%' (units.human), bitfields with their set bits' names
    ('fet=3(dsg_fet,chg_fet)'); raw: the integers the map decodes to."""
    from edgegw import units
    if raw:
        return " ".join("%s=%s" % (k, v[k]) for k in v)
    out = []
    for k in v:
        t = units.human(k, v[k]).replace(" ", "")
        if bits and k in bits:
            t += "(%s)" % ",".join(bits[k])
        out.append("%s=%s" % (k, t))
    return " ".join(out)


@cli.command("decode")
@trace_arg
@map_opt
@config_opt
@tbaud_opt
@format_opt
@click.option("--raw", is_flag=True, help="Values as the integers the map decodes to "
              "(soc_cpct=8320), not in human units (83.20%).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines, one object per frame (integer values).")
def decode_cmd(trace_file, maps, config, baud, fmt, raw, as_json):
    """Each frame with device, function, point names and decoded values (human units:
    v_cv=53.25V, t_max_cdc=21.35°C; --raw or --json for the integers)."""
    devs = Devices(maps, config)
    header, recs = read_trace(trace_file, None if fmt == "auto" else fmt, devs)
    dec = decode_records(recs, devs, _baud_for(header, baud))
    for e in dec:
        if as_json:
            click.echo(json.dumps(e))
            continue
        t = "%10.3f" % (e["t_us"] / 1e6)
        if "slave" not in e:
            click.echo("%s %-4s %s [%s]" % (t, e["dir"], e["hex"], ",".join(e["flags"])))
            continue
        what = "%s FC%02d" % (e["device"], e["fc"])
        if "addr" in e:
            what += " 0x%04x+%d" % (e["addr"], e["qty"])
        tail = ""
        if "latency_us" in e:
            tail += " (%.1f ms)" % (e["latency_us"] / 1000.0)
        if e.get("error"):
            tail += " ERROR %s" % e["error"]
        if e.get("exc"):
            tail += " EXCEPTION %d %s" % (e["exc"], e["exc_name"])
        if e.get("values"):
            tail += " " + _fmt_values(e["values"], raw, e.get("bits"))
        click.echo("%s %-4s %s%s" % (t, e["dir"], what, tail))


@cli.command("stats")
@trace_arg
@map_opt
@config_opt
@tbaud_opt
@format_opt
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def stats_cmd(trace_file, maps, config, baud, fmt, as_json):
    """Per device: requests, timeouts, CRC errors, exceptions, latency p50/p99."""
    devs = Devices(maps, config)
    header, recs = read_trace(trace_file, None if fmt == "auto" else fmt, devs)
    s = stats(decode_records(recs, devs, _baud_for(header, baud)))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo("%-16s %-6s %5s %6s %6s %6s %5s %5s %5s %8s %8s" % (
        "device", "bus", "slave", "req", "rsp", "tmo", "crc", "bad", "exc", "p50 ms", "p99 ms"))
    for d in s["devices"]:
        click.echo("%-16s %-6s %5d %6d %6d %6d %5d %5d %5d %8s %8s" % (
            d["device"], d["bus"], d["slave"], d["requests"], d["responses"], d["timeouts"],
            d["crc_errors"], d["bad_frames"], d["exceptions"], d["latency_ms_p50"],
            d["latency_ms_p99"]))
    click.echo("%d frames, %d junk" % (s["frames"], s["junk_frames"]))


@cli.command("export")
@trace_arg
@map_opt
@config_opt
@tbaud_opt
@format_opt
@click.option("--csv", "as_csv", is_flag=True, required=True, help="CSV output (the format).")
@click.option("--frames", "what", flag_value="frames", help="One row per frame, not per value.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Output file (default stdout).")
def export_cmd(trace_file, maps, config, baud, fmt, as_csv, what, out):
    """CSV: one row per decoded value (t_s, bus, slave, device, fc, point, value), or with
    --frames one row per frame."""
    devs = Devices(maps, config)
    header, recs = read_trace(trace_file, None if fmt == "auto" else fmt, devs)
    dec = decode_records(recs, devs, _baud_for(header, baud))
    f = open(out, "w", newline="") if out else sys.stdout
    w = csv.writer(f)
    if what == "frames":
        w.writerow(["t_s", "bus", "dir", "slave", "fc", "device", "addr", "qty", "latency_ms",
                    "exc", "flags", "hex"])
        for e in dec:
            lat = e.get("latency_us")
            w.writerow(["%.6f" % (e["t_us"] / 1e6), e["bus"], e["dir"], e.get("slave", ""),
                        e.get("fc", ""), e.get("device", ""), e.get("addr", ""),
                        e.get("qty", ""), "" if lat is None else "%.3f" % (lat / 1000.0),
                        e.get("exc", ""), " ".join(e["flags"]), e["hex"]])
    else:
        w.writerow(["t_s", "bus", "slave", "device", "fc", "point", "value"])
        for e in dec:
            if e["dir"] != "rsp" or not e.get("values"):
                continue
            for k, v in e["values"].items():
                w.writerow(["%.6f" % (e["t_us"] / 1e6), e["bus"], e["slave"], e["device"],
                            e["fc"], k, v])
    if out:
        f.close()
        click.echo("wrote %s" % out, err=True)
