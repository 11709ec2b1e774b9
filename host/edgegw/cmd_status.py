"""`edgegw status`: what the gateway sees right now: derived site powers, every device
point with its age and quality, bus statistics, link state.

Two sources: the gateway's REPL (`--port`: runs edgefw.app.status() in raw REPL mode, the
control loop keeps running in its thread) or its MQTT telemetry (`--mqtt HOST[:PORT]
--device-id ID`: the retained status and the next telemetry message, via paho)."""
import json
import time

import click

from edgegw.cli import UserError

# print_status writes the JSON in pieces (no 5 KB string on a fragmented gateway heap);
# firmware from before it has only status()
STATUS_CODE = ("_p = %s\nfrom edgefw import app as _a\ntry:\n    _a.print_status(_p)\n"
               "except AttributeError:\n    import json\n    print(json.dumps(_a.status(_p)))")

# point-name suffix -> (divisor, unit) for display; values stay integers in --json
UNITS = (("_w", 1, "W"), ("_wh", 1, "Wh"), ("_dv", 10, "V"), ("_cv", 100, "V"),
         ("_mv", 1000, "V"), ("_ma", 1000, "A"), ("_ca", 100, "A"), ("_chz", 100, "Hz"),
         ("_milli", 1000, ""), ("_cpct", 100, "%"), ("_dc", 10, "degC"),
         ("_cdc", 100, "degC"))


def fmt(name, v):
    """A point value in its unit: soc_cpct 8320 -> '83.20 %'."""
    if not isinstance(v, int) or isinstance(v, bool):
        return "-" if v is None else str(v)
    for suf, div, unit in UNITS:
        if name.endswith(suf):
            if div == 1:
                return "%d %s" % (v, unit)
            digits = len(str(div)) - 1
            s = "-" if v < 0 else ""
            a = abs(v)
            return ("%s%d.%0*d %s" % (s, a // div, digits, a % div, unit)).strip()
    return str(v)


def from_repl(port, baud=115200, points=True, timeout=10.0):
    from edgegw.console_io import Device
    with Device(port, baud, timeout) as dev:
        try:
            out = dev.exec(STATUS_CODE % bool(points)).strip()
        except UserError as e:
            if "app" in str(e) or "ImportError" in str(e):
                raise UserError("the gateway has no edgefw.app (deploy the firmware first): %s"
                                % e)
            raise
    try:
        s = json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        raise UserError("the gateway's status was not JSON: %r" % out[-200:])
    s["source"] = "repl"
    return s


def parse_broker(text):
    from edgegw.broker import parse_broker as parse
    try:
        return parse(text, "--mqtt")
    except ValueError as e:
        raise UserError(str(e))


def from_mqtt(broker, device_id, timeout=15.0, username=None, password=None):
    """The retained status and the next telemetry record of one gateway."""
    import paho.mqtt.client as mqtt
    from protocols import topics
    host, port = parse_broker(broker)
    got = {}

    def on_message(c, u, msg):
        try:
            d = json.loads(msg.payload.decode())
        except ValueError:
            return
        _, leaf = topics.split(msg.topic)
        got[leaf] = d

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgegw-status-%d" % time.time_ns())
    if username:
        c.username_pw_set(username, password)
    c.on_message = on_message
    try:
        c.connect(host, port, keepalive=30)
    except OSError as e:
        raise UserError("--mqtt %s: cannot connect (%s)" % (broker, e))
    c.subscribe([(topics.topic(device_id, topics.TELEMETRY), 0),
                 (topics.topic(device_id, topics.STATUS), 0)])
    end = time.monotonic() + timeout
    try:
        while topics.TELEMETRY not in got and time.monotonic() < end:
            c.loop(timeout=0.2)
    finally:
        c.disconnect()
    if topics.TELEMETRY not in got:
        st = got.get(topics.STATUS)
        raise UserError("no telemetry from %s on %s within %g s (status: %s); check "
                        "--device-id and that the gateway's link is up"
                        % (device_id, broker, timeout, json.dumps(st) if st else "none"))
    t = got[topics.TELEMETRY]
    site = {k: t.get(k) for k in ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct")}
    return {"source": "mqtt", "device_id": device_id, "telemetry": t,
            "online": got.get(topics.STATUS), "site": site, "sp_w": t.get("sp_w"),
            "link": {"state": t.get("state")}, "t": t.get("ts")}


def render(s):
    """Text view of a status dict (REPL or MQTT)."""
    lines = []
    link = s.get("link") or {}
    head = "%s  %s" % (s.get("device_id", "?"), s.get("platform", s.get("source", "")))
    if s.get("uptime_s") is not None:
        head += "  up %ss" % s["uptime_s"]
    if s.get("config"):
        head += "  config %s" % s["config"]
    if s.get("mode"):
        head += "  mode %s" % s["mode"]
    head += "  link %s" % (link.get("state") or "off")
    lines.append(head)
    site = s.get("site") or {}
    q = site.get("q") or {}
    parts = []
    for k in ("grid_w", "pv_w", "it_w", "aux_w", "bat_w", "soc_cpct", "ccl_w", "dcl_w"):
        if k in site:
            parts.append("%s %s%s" % (k[:-2] if k.endswith("_w") else "soc", fmt(k, site[k]),
                                      "" if q.get(k, "ok") == "ok" else " (%s)" % q.get(k)))
    lines.append("site: " + "  ".join(parts))
    if s.get("sp_w") is not None:
        lines.append("setpoint: %s from %s, bound by %s" % (fmt("sp_w", s.get("sp_w")),
                                                           s.get("sp_src", "?"),
                                                           s.get("bound_by", "?")))
    saf = s.get("safety")
    if saf:
        lines.append("safety: %s" % (json.dumps(saf, sort_keys=True)
                                     if not isinstance(saf, str) else saf))
    pts = site.get("points") or {}
    if pts:
        lines.append("%-10s %-16s %14s %9s  %s" % ("device", "point", "value", "age ms", "q"))
        for dev in sorted(pts):
            for name in sorted(pts[dev]):
                v = pts[dev][name]
                val, age, qq = (v + [None, None, None])[:3] if isinstance(v, list) else \
                    (v, None, None)
                lines.append("%-10s %-16s %14s %9s  %s" % (dev, name, fmt(name, val),
                                                          "-" if age is None else age, qq or ""))
    buses = s.get("buses") or {}
    if buses:
        lines.append("%-6s %-10s %7s %7s %5s %5s %5s %6s" % ("bus", "device", "req", "ok",
                                                          "tmo", "crc", "exc", "stale"))
        for b in sorted(buses):
            for dev, st in sorted((buses[b] or {}).items()):
                if dev.startswith("_") or not isinstance(st, dict):
                    continue
                lines.append("%-6s %-10s %7s %7s %5s %5s %5s %6s" % (
                    b, dev, st.get("requests", "-"), st.get("ok", "-"), st.get("timeouts", "-"),
                    st.get("crc", "-"), st.get("exceptions", "-"), st.get("stale", "-")))
    if link and len(link) > 1:
        keep = ("state", "connected", "connects", "fails", "ring_n", "last_error")
        lines.append("link: " + "  ".join("%s=%s" % (k, link[k]) for k in keep if k in link))
    if s.get("errors"):
        lines.append("errors: %s" % s["errors"])
    return "\n".join(lines)


def get(port, baud, mqtt_broker, device_id, points=True, timeout=15.0):
    if (port is None) == (mqtt_broker is None):
        raise UserError("give either --port (the gateway's REPL) or --mqtt HOST[:PORT]")
    if mqtt_broker:
        if not device_id:
            raise UserError("--mqtt needs --device-id (the gateway's device_id)")
        return from_mqtt(mqtt_broker, device_id, timeout)
    return from_repl(port, baud, points, timeout)


source_opts = [
    click.option("--port", "-p", help="The gateway's REPL (URL)."),
    click.option("--baud", "-b", default=115200, show_default=True,
                 type=click.IntRange(300, 4000000)),
    click.option("--mqtt", "mqtt_broker", metavar="HOST[:PORT]",
                 help="Read telemetry from this broker instead of the REPL."),
    click.option("--device-id", help="With --mqtt: which gateway."),
    click.option("--timeout", type=click.FloatRange(0.1, 600), default=15.0, show_default=True,
                 help="How long to wait for the REPL (silence) or for telemetry (--mqtt)."),
]


def with_source(f):
    for o in reversed(source_opts):
        f = o(f)
    return f


@click.command()
@with_source
@click.option("--no-points", is_flag=True, help="Only derived values and statistics.")
@click.option("--watch", type=click.FloatRange(0.2, 3600), metavar="S",
              help="Refresh every S seconds until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def cli(port, baud, mqtt_broker, device_id, timeout, no_points, watch, as_json):
    """Live point table, bus statistics and link state of a gateway.

    \b
    edgegw status --port /dev/ttyUSB0
    edgegw status --port /dev/pts/4 --json
    edgegw status --mqtt broker.local --device-id edgegw-0001 --watch 10
    """
    while True:
        s = get(port, baud, mqtt_broker, device_id, not no_points, timeout)
        if as_json:
            click.echo(json.dumps(s, sort_keys=True))
        else:
            if watch:
                click.clear()
            click.echo(render(s))
        if not watch:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return
