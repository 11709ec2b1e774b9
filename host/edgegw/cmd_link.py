"""`edgegw link`: the bench's stand-in for the cloud EMS over MQTT (paho-mqtt).

    edgegw link watch [--json]                    telemetry, events, acks, status as they come
    edgegw link setpoint W --key HEX              a signed setpoint (+ = discharge), waits for the ack
    edgegw link schedule FILE --key HEX           a signed schedule (JSON windows)
    edgegw link forecast --load-w 400,900 ...     a signed compute-load forecast
    edgegw link tariff FILE|--clear --key HEX     a signed site tariff until --exp
    edgegw link collect --out F                   receiver: dedup by seq, reports lost/dup
                        [--influx F|-] [--prometheus PORT] [--share GROUP]
    edgegw link keygen -o key.hex                 a new random device key (config link.key)

Broker, device and key also come from EDGEGW_BROKER, EDGEGW_DEVICE, EDGEGW_KEY.
Topics and payloads: docs/mqtt.md.
"""
import json
import os
import sys
import threading
import time

import click
import paho.mqtt.client as paho

from edgefw import auth
from edgegw import pairing
from protocols import topics as T



def UserError(msg):
    # imported when raised: importing edgegw.cli at load time would be circular when this
    # module is imported first (tests, benches use Collector and send_command)
    from edgegw.cli import UserError as E
    return E(msg)


def parse_broker(s):
    """'host:port' or 'host' -> (host, port); a bad port is a user error naming --broker."""
    from edgegw.broker import parse_broker as parse
    try:
        return parse(s)
    except ValueError as e:
        raise UserError(str(e)) from None


def connect(broker, client_id="", timeout_s=5, on_connect=None):
    host, port = parse_broker(broker)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    up = threading.Event()

    def _on_connect(cl, u, f, rc, p=None):
        if on_connect:
            on_connect(cl)
        up.set()
    c.on_connect = _on_connect
    from edgegw.broker import start
    try:
        start(c, host, port)
    except ConnectionError as e:
        raise UserError("--%s" % e) from None
    if not up.wait(timeout_s):
        c.loop_stop()
        raise UserError("--broker %s:%d: no CONNACK within %d s" % (host, port, timeout_s))
    return c


class Collector:
    """Receives telemetry and events of one gateway (or '+'), deduplicates by
    (device, seq) and counts lost records (gaps in seq within one boot of a gateway)."""

    def __init__(self, broker, device="+", out=None, sinks=(), share=None, client_id=""):
        """sinks: objects with record(device, leaf, rec), called once per first arrival
        (edgegw.exporters); share: a shared-subscription group, so several collectors
        split the gateways' records ($share/<group>/...; docs/fleet.md)."""
        self.lock = threading.Lock()
        self.sinks = list(sinks)
        self.seen = {}     # device -> set of seq
        self.first = []    # (device, seq, record) first arrivals, in order
        self.dup = 0
        self.raw = 0
        self.sink_errors = 0
        self.out = out
        self.ready = threading.Event()
        self.device = device

        pre = "$share/%s/" % share if share else ""

        def on_connect(cl):
            cl.subscribe([(pre + T.topic(device, T.TELEMETRY), 1),
                          (pre + T.topic(device, T.EVENTS), 1)])
        self.c = connect(broker, client_id=client_id, on_connect=on_connect)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_disconnect = lambda *a: self.ready.clear()
        self.c.on_message = self._on
        self.c.reconnect_delay_set(0.05, 1)
        self.ready.wait(5)

    def _on(self, c, u, msg):
        dev, leaf = T.split(msg.topic)
        try:
            d = json.loads(msg.payload)
            seq = d["seq"]
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.raw += 1
            s = self.seen.setdefault(dev, set())
            if seq in s:
                self.dup += 1
                return
            s.add(seq)
            self.first.append((dev, seq, d))
            if self.out:
                d2 = dict(d, _device=dev, _topic=leaf)
                self.out.write(json.dumps(d2) + "\n")
                self.out.flush()
            for k in self.sinks:
                try:
                    k.record(dev, leaf, d)
                except (ValueError, TypeError, OSError):
                    self.sink_errors += 1   # an odd record costs its line, not the others

    def report(self):
        """{received, dup, lost, out_of_order}; gaps across a gateway reboot (the `boot`
        field changes) are not counted as lost: the gateway skips to a new seq block."""
        with self.lock:
            first = list(self.first)
            dup = self.dup
        lost = 0
        ooo = 0
        last = {}
        bysdev = {}
        for dev, seq, d in first:
            bysdev.setdefault(dev, []).append((seq, d.get("boot")))
            if dev in last and seq < last[dev]:
                ooo += 1
            last[dev] = max(seq, last.get(dev, seq))
        for dev, lst in bysdev.items():
            lst.sort()
            for i in range(1, len(lst)):
                gap = lst[i][0] - lst[i - 1][0] - 1
                if gap > 0 and lst[i][1] == lst[i - 1][1]:
                    lost += gap
        return {"received": len(first), "dup": dup, "lost": lost, "out_of_order": ooo}

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _key(key, key_file):
    if key_file:
        from edgegw.cli import read_text
        key = read_text(key_file, "--key-file").strip()
    if not key:
        raise UserError("--key (or --key-file, EDGEGW_KEY): the device key as hex is needed "
                        "to sign commands")
    try:
        return auth.parse_key(key.strip())
    except ValueError as e:
        raise UserError("--key: %s" % e) from None


def send_command(broker, device, leaf, payload, key, seq=None, ts=None, exp_s=60,
                 wait_s=5.0, sign=True):
    """Sign and publish a command; returns the gateway's ack (dict) or None on timeout."""
    now = int(time.time()) if ts is None else ts
    cmd = pairing.command(key, device, leaf, payload,
                          int(time.time() * 1000) if seq is None else seq, now, exp_s, sign)
    acks = pairing.Inbox()

    def on_msg(c, u, m):
        try:
            acks.put(json.loads(m.payload))
        except ValueError:
            return
    subbed = threading.Event()
    c = connect(broker, on_connect=lambda cl: cl.subscribe(T.topic(device, T.ACK), 1))
    c.on_subscribe = lambda *a: subbed.set()
    c.on_message = on_msg
    ack = None
    try:
        subbed.wait(wait_s)
        info = c.publish(T.topic(device, leaf), json.dumps(cmd, separators=(",", ":")), qos=1)
        info.wait_for_publish(wait_s)
        if wait_s:
            ack = acks.wait(pairing.is_ack_of(cmd), wait_s, fail=False)
    finally:
        c.loop_stop()
        c.disconnect()
    return cmd, ack


def _one_device(ctx, param, value):
    """A command goes to one gateway: no MQTT wildcard or topic separator in its id."""
    if value is not None and (not value or any(c in value for c in "+#/\0")):
        raise click.BadParameter("%r: one gateway's device_id (no +, #, /)" % value)
    return value


def _device_filter(ctx, param, value):
    """watch/collect: one device_id or + for all (# and / would change the topic)."""
    if value != "+" and (not value or any(c in value for c in "+#/\0")):
        raise click.BadParameter("%r: a device_id, or + for every gateway" % value)
    return value


def _common(f):
    f = click.option("--broker", envvar="EDGEGW_BROKER", default="127.0.0.1:1883",
                     show_default=True, help="MQTT broker HOST:PORT")(f)
    f = click.option("--device", envvar="EDGEGW_DEVICE", required=True, callback=_one_device,
                     help="gateway device_id")(f)
    return f


def _ts(ctx, param, value):
    if value is None or value == "gateway":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("%r: epoch seconds, or 'gateway'" % value) from None


def first_message(broker, topic, qos, timeout_s, accept=None):
    """The first JSON message on topic that accept() takes (a retained one counts), or
    None after timeout_s (edgegw.broker.first_message, errors as UserError)."""
    from edgegw.broker import first_message as first
    host, port = parse_broker(broker)
    try:
        return first(host, port, topic, qos, timeout_s, accept)
    except ConnectionError as e:
        raise UserError("--%s" % e) from None


def gateway_time(broker, device, timeout_s=15.0):
    """The gateway's own clock: the ts of its next telemetry record (a virtual gateway runs
    site time, not this host's)."""
    d = first_message(broker, T.topic(device, T.TELEMETRY), 0, timeout_s,
                      lambda d: isinstance(d, dict) and isinstance(d.get("ts"), int))
    if d is None:
        raise UserError("--ts gateway: no telemetry from %s within %g s (is its link up with "
                        "status_s > 0?)" % (device, timeout_s))
    return d["ts"]


# the default validity of a command timed by the gateway's own clock (site s): at
# `edgegw sil --speed 10` a CLI start and an MQTT round trip of 6 s real are 60 s of its time
GATEWAY_TS_EXP_S = 600


def _resolve_ts(o):
    """--ts gateway: the gateway's clock and the longer default validity that goes with it."""
    if o["ts"] == "gateway":
        o["ts"] = gateway_time(o["broker"], o["device"])
        if o["exp_s"] is None:
            o["exp_s"] = GATEWAY_TS_EXP_S
    if o["exp_s"] is None:
        o["exp_s"] = 60


def _stale_hint(cmd, ack):
    """Why a signed command was stale: the clocks, when the ack says the gateway's."""
    g = ack.get("ts")
    if not isinstance(g, int):
        return ""
    skew = g - cmd["ts"]
    return ("; the gateway's clock is %s, %d s %s this command's ts (a virtual gateway keeps "
            "its own site time): use --ts gateway or --ts %d"
            % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(g)), abs(skew),
               "ahead of" if skew > 0 else "behind", g))


def _cmd_opts(f):
    f = _common(f)
    f = click.option("--key", envvar="EDGEGW_KEY", help="device key, hex (config link.key)")(f)
    f = click.option("--key-file", type=click.Path(), help="file holding the key as hex")(f)
    f = click.option("--exp", "exp_s", type=click.IntRange(1, 7 * 86400), default=None,
                     help="valid for S seconds from --ts (default 60; with --ts gateway "
                     "%d: a virtual gateway's clock may run --speed times faster than this "
                     "host's while the command is on its way)" % GATEWAY_TS_EXP_S)(f)
    f = click.option("--ts", callback=_ts, metavar="EPOCH_S|gateway",
                     help="command time, epoch s (default: now); 'gateway' = the gateway's "
                     "own clock from its telemetry (a virtual gateway runs site time)")(f)
    f = click.option("--seq", type=click.IntRange(0), help="sequence number (default: "
                     "epoch ms, rising across invocations)")(f)
    f = click.option("--wait", "wait_s", type=click.FloatRange(0), default=5.0,
                     show_default=True, help="seconds to wait for the gateway's ack")(f)
    return f


def _send(o, leaf, payload):
    key = _key(o["key"], o["key_file"])
    _resolve_ts(o)
    cmd, a = send_command(o["broker"], o["device"], leaf, payload, key, o["seq"], o["ts"],
                          o["exp_s"], o["wait_s"])
    if not o["wait_s"]:
        click.echo("sent seq %d" % cmd["seq"])
        return
    if a is None:
        raise UserError("no ack from %s within %.1f s (gateway offline? wrong --device?)"
                        % (o["device"], o["wait_s"]))
    click.echo(json.dumps(a))
    if not a.get("ok"):
        raise UserError("%s rejected: %s%s%s" % (
            T.COMMANDS[leaf], a.get("reason"), " (%s)" % a["detail"] if a.get("detail") else "",
            _stale_hint(cmd, a) if a.get("reason") == "stale" else ""))


@click.group()
def cli():
    """Cloud EMS stand-in over MQTT: watch, signed commands, collector."""


@cli.command()
@click.option("--broker", envvar="EDGEGW_BROKER", default="127.0.0.1:1883", show_default=True)
@click.option("--device", envvar="EDGEGW_DEVICE", default="+", show_default=True,
              callback=_device_filter, help="device_id, + = every gateway")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--count", type=click.IntRange(1), help="stop after N messages")
@click.option("--timeout", type=click.FloatRange(0), help="stop after S seconds")
def watch(broker, device, as_json, count, timeout):
    """Print telemetry, events, acks and status as they arrive."""
    n = [0]
    done = threading.Event()

    def on_msg(c, u, m):
        dev, leaf = T.split(m.topic)
        if leaf is None or leaf.startswith("cmd/") or leaf == T.FORECAST or done.is_set():
            return
        try:
            d = json.loads(m.payload)
        except ValueError:
            d = {"raw": m.payload.decode("utf-8", "replace")}
        if as_json:
            click.echo(json.dumps({"device": dev, "topic": leaf, "msg": d}))
        elif leaf == T.TELEMETRY and isinstance(d, dict):
            click.echo("%s #%s %s grid=%s pv=%s it=%s bat=%s soc=%s sp=%s" % (
                dev, d.get("seq"), d.get("state"), d.get("grid_w"), d.get("pv_w"),
                d.get("it_w"), d.get("bat_w"), d.get("soc_cpct"), d.get("sp_w")))
        else:
            click.echo("%s %s %s" % (dev, leaf, json.dumps(d)))
        n[0] += 1
        if count and n[0] >= count:
            done.set()
    c = connect(broker, on_connect=lambda cl: cl.subscribe(T.topic(device, "#"), 1))
    c.on_message = on_msg
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        c.loop_stop()
        c.disconnect()


@cli.command(context_settings={"ignore_unknown_options": True})  # so -1500 is a value
@click.argument("watts", type=int)
@_cmd_opts
def setpoint(watts, **o):
    """Send a signed PCS setpoint of WATTS (+ = discharge, - = charge)."""
    _send(o, T.CMD_SETPOINT, {"p_w": watts})


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_cmd_opts
def schedule(file, **o):
    """Send a signed schedule: FILE holds a JSON list of windows {t0, t1, soc_cpct?,
    pmin_w?, pmax_w?, aim_w?, exp?} (or {"windows": [...]}); the gateway follows it
    until --exp."""
    from edgegw.cli import read_json
    d = read_json(file, "FILE")
    if isinstance(d, dict):
        d = d.get("windows")
    errs = T.check_schedule({"windows": d})
    if errs:
        raise UserError("%s: %s" % (file, errs[0]))
    _send(o, T.CMD_SCHEDULE, {"windows": d})


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--clear", is_flag=True, help="back to the tariff in the gateway's config")
@_cmd_opts
def tariff(file, clear, **o):
    """Send a signed tariff: FILE holds a site.tariff object (docs/config.md; or a site
    config / {"tariff": ...} holding one); the gateway's fallback prices with it until
    --exp, then with its configured tariff again."""
    from edgefw import tariff as fwtariff
    from edgegw.cli import read_json
    if clear == (file is not None):
        raise UserError("tariff: give FILE or --clear (one of them)")
    t = None
    if file is not None:
        t = read_json(file, "FILE")
        for k in ("site", "tariff"):
            if isinstance(t, dict) and isinstance(t.get(k), dict):
                t = t[k]
        # the shape and ranges here; whether an export price is allowed the gateway says
        errs = fwtariff.validate(t, "tariff", True)[1]
        if errs:
            raise UserError("%s: %s" % (file, errs[0]))
        # free text stays home: the gateway does not use it and only ASCII can be signed
        t = {k: v for k, v in t.items() if k not in ("name", "note")}
    _send(o, T.CMD_TARIFF, {"tariff": t})


@cli.command()
@click.option("--load-w", required=True, help="forecast W per step, comma separated")
@click.option("--step-s", type=click.IntRange(60, 3600), default=300, show_default=True)
@click.option("--t0", type=int, help="epoch s of the first step (default: --ts/now)")
@click.option("--measured-w", type=click.IntRange(0), default=0)
@click.option("--source", default="cli", show_default=True)
@_cmd_opts
def forecast(load_w, step_s, t0, measured_w, source, **o):
    """Send a signed compute-load forecast (as the tracker does)."""
    try:
        lw = [int(x) for x in load_w.split(",") if x.strip()]
    except ValueError:
        raise UserError("--load-w: %r is not a list of integers" % load_w) from None
    _resolve_ts(o)
    p = {"t0": t0 if t0 is not None else (o["ts"] or int(time.time())), "step_s": step_s,
         "load_w": lw, "measured_w": measured_w, "source": source}
    errs = T.check_forecast(p)
    if errs:
        raise UserError("--" + errs[0].replace("_", "-", 1) if errs[0].startswith("load_w")
                        else errs[0])
    _send(o, T.FORECAST, p)


@cli.command("config")
@click.argument("file", type=click.Path(dir_okay=False))
@_cmd_opts
def config_(file, **o):
    """Send a signed whole-gateway config (taken at the gateway's next restart)."""
    from edgegw.cli import read_json
    d = read_json(file, "FILE")
    if not isinstance(d, dict):
        raise UserError("%s: must hold a JSON object" % file)
    _send(o, T.CMD_CONFIG, {"config": d})


def _listen(ctx, param, value):
    """--prometheus [HOST:]PORT -> (host, port); the host defaults to loopback."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise click.BadParameter("%r: [HOST:]PORT, e.g. 9108 or 0.0.0.0:9108" % value) \
            from None
    if not 0 < p < 65536:
        raise click.BadParameter("port %d out of range 1..65535" % p)
    return host or "127.0.0.1", p


@cli.command()
@click.option("--broker", envvar="EDGEGW_BROKER", default="127.0.0.1:1883", show_default=True)
@click.option("--device", envvar="EDGEGW_DEVICE", default="+", show_default=True,
              callback=_device_filter)
@click.option("--out", type=click.File("a"), help="JSON Lines of first arrivals")
@click.option("--influx", type=click.File("a"), metavar="FILE|-",
              help="InfluxDB line protocol of each telemetry record (- = stdout)")
@click.option("--prometheus", callback=_listen, metavar="[HOST:]PORT",
              help="serve the latest telemetry of each gateway as Prometheus metrics "
              "(HOST default 127.0.0.1)")
@click.option("--share", metavar="GROUP", help="shared subscription $share/GROUP/...: "
              "collectors of one group split the records (docs/fleet.md)")
@click.option("--duration", type=click.FloatRange(0), help="stop after S seconds (default: Ctrl-C)")
def collect(broker, device, out, influx, prometheus, share, duration):
    """Receive telemetry and events, keep each record once (dedup by seq), report
    received / duplicates / lost / out of order when stopped. Outputs: --out JSON Lines,
    --influx line protocol, --prometheus metrics (at least one)."""
    import signal
    from edgegw import exporters
    if out is None and influx is None and prometheus is None:
        raise UserError("collect: give at least one output: --out FILE, --influx FILE|- "
                        "or --prometheus PORT")

    stop = []

    def on_term(signum, frame):   # a service manager's stop: report like Ctrl-C does
        stop.append(signum)       # (a flag, not an exception: it may come mid set-up)
    signal.signal(signal.SIGTERM, on_term)
    sinks = []
    prom = None
    if influx is not None:
        sinks.append(exporters.InfluxSink(influx))
    if prometheus is not None:
        prom = exporters.PromSink()
        try:
            prom.serve(prometheus[1], prometheus[0])
        except OSError as e:
            raise UserError("--prometheus %s:%d: %s" % (prometheus[0], prometheus[1],
                                                        e.strerror or e)) from None
        sinks.append(prom)
        click.echo("prometheus metrics on http://%s:%d/metrics" % prometheus, err=True)
    col = Collector(broker, device, out, sinks, share)
    if prom is not None:
        prom.collector = col
    try:
        t_end = None if duration is None else time.monotonic() + duration
        while not stop and (t_end is None or time.monotonic() < t_end):
            time.sleep(0.1 if t_end is None else max(0.0, min(0.1, t_end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        col.close()
        if prom is not None:
            prom.close()
    # the report goes to stderr when the line protocol is on stdout
    click.echo(json.dumps(col.report()), err=influx is not None and influx.name == "<stdout>")
    sys.stdout.flush()


@cli.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True,
              help="Where to write the key (hex); not overwritten if it exists.")
def keygen(out):
    """Make a random 32-byte device key as hex: the gateway's config link.key, and the
    --key-file of `link` commands and `tracker run`."""
    from edgegw.cli import out_path
    out_path(out, "--out")
    key = os.urandom(32).hex()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError("--out %s: exists already (a key in use is not replaced)" % out) \
            from None
    except OSError as e:
        raise UserError("--out %s: cannot write it (%s)" % (out, e.strerror)) from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    click.echo("wrote %s (32-byte key, hex): put it in the gateway's config as link.key"
               % out, err=True)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
