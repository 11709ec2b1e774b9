"""`edgegw sil`: the virtual gateway - the unmodified firmware under micropython against
a simulated site (BMS, PCS, PV, grid and IT-load meters answering real Modbus RTU on
ptys). Prints where the REPL and the buses are, then a live line of site values."""
import os
import sys
import time

import click

from edgegw.cli import UserError, read_json, read_text
from edgegw.cli import read_config as read_cfg
from edgegw.vgw import DEFAULT_HEAP

# built-in scenarios: SimSite parameters (+ the start hour, site time UTC)
SCENARIOS = {
    "sunny": {"start_h": 7, "pv_peak_w": 6000, "it": 2500, "aux": 400, "soc_init_cpct": 5000},
    "cloudy": {"start_h": 9, "pv_peak_w": 1800, "it": 2500, "aux": 400, "soc_init_cpct": 6000},
    "night": {"start_h": 20, "pv_peak_w": 6000, "it": 2200, "aux": 300, "soc_init_cpct": 9000},
    "steady": {"start_h": 12, "pv": 3000, "it": 2200, "aux": 400, "soc_init_cpct": 6000},
}
# scenario keys that shape the simulation; every other key is a dispatch site parameter
_SIM_KEYS = ("start_h", "t0", "pv_peak_w", "pv", "it", "aux", "soc_init_cpct", "battery_wh",
             "pcs_w", "ramp_w_s", "eta_c_milli", "eta_d_milli", "max_charge_a",
             "max_discharge_a", "note", "name")


def load_scenario(spec):
    """A built-in name or a JSON file -> (scenario dict, site params for the config)."""
    if spec in SCENARIOS:
        sc = dict(SCENARIOS[spec])
    else:
        if not os.path.exists(spec):
            raise UserError("--scenario: %r is neither a built-in (%s) nor a file"
                            % (spec, ", ".join(sorted(SCENARIOS))))
        sc = read_json(spec, "--scenario")
        if not isinstance(sc, dict):
            raise UserError("--scenario %s: must be a JSON object" % spec)
    site = {k: v for k, v in sc.items() if k not in _SIM_KEYS or k in (
        "battery_wh", "pcs_w", "ramp_w_s", "eta_c_milli", "eta_d_milli")}
    return sc, site


def make_site(sc, cfg=None):
    """The simulated site of a scenario; a config with several bms/pcs devices gets the
    multi-unit plant (simmulti.py: one pack per bms, one PCS per pcs device, their
    capacity_wh / pcs / rating_w; battery_wh and pcs_w of the scenario do not apply)."""
    from edgegw.simsite import SimSite
    from edgegw import simmulti
    for k in ("pv", "it", "aux"):
        v = sc.get(k)
        if v is not None and not isinstance(v, (int, float, list)):
            raise UserError("scenario.%s: a number (W) or a list of [seconds_of_day, W]" % k)
    if "t0" in sc:
        t0 = sc["t0"]
    else:
        day = int(time.time()) // 86400 * 86400
        t0 = day + int(float(sc.get("start_h", 7)) * 3600)
    kw = {}
    for k in ("battery_wh", "pcs_w", "ramp_w_s", "eta_c_milli", "eta_d_milli", "pv_peak_w",
              "max_charge_a", "max_discharge_a", "pv", "it", "aux"):
        if k in sc:
            kw[k] = sc[k]
    if "soc_init_cpct" in sc:
        kw["soc_cpct"] = sc["soc_init_cpct"]
    try:
        if cfg is not None and simmulti.is_multi(cfg):
            for k in ("battery_wh", "pcs_w", "max_charge_a"):
                kw.pop(k, None)
            if "max_discharge_a" in kw:
                kw["max_a"] = kw.pop("max_discharge_a")
            return simmulti.MultiSite.from_config(cfg, t0=t0, **kw)
        return SimSite(t0=t0, **kw)
    except (TypeError, ValueError) as e:
        raise UserError("scenario: %s" % e)


def read_config(path):
    """A gateway config file (plain JSON or with the firmware's CRC trailer), validated."""
    from edgefw import config as fwconfig
    cfg, errs = read_cfg(path, "--config")
    if cfg is not None:
        errs = fwconfig.validate(cfg)
    if errs:
        raise UserError("--config %s: %s" % (path, "; ".join(errs)))
    return cfg


def heapsize_opt(ctx, param, value):
    """--heapsize: MicroPython's -X heapsize form (digits, optional k or m)."""
    import re
    if value is None or re.fullmatch(r"[1-9][0-9]{0,6}[kKmM]?", value):
        return value
    raise click.BadParameter("%r: a size like 384k or 2m" % value)


def boot_error(gw):
    """The last line of a traceback the firmware printed before the REPL, or None: the
    launch failed (a heap too small, a broken file on the gateway's filesystem)."""
    head = gw.output.split(">>> ", 1)[0]
    if "Traceback" not in head:
        return None
    lines = [ln.strip() for ln in head.splitlines() if ln.strip()]
    tail = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "MicroPython",
                                                      "Type "))]
    return tail[-1] if tail else lines[-1]


def existing_config(dirpath):
    """(kept, cfg): whether --dir already holds a config.json (pushed there, say), which sil
    keeps rather than writing its default over it (the firmware itself falls back to its
    last good one if it is bad), and that config when valid (it says what to simulate)."""
    path = os.path.join(dirpath or "", "config.json")
    if not dirpath or not os.path.isfile(path):
        return False, None
    from edgefw import config as fwconfig
    try:
        cfg, errs = read_cfg(path, "--dir")
    except UserError:
        return True, None
    return True, (cfg if cfg is not None and not fwconfig.validate(cfg) else None)


def link_section(broker, key_file):
    """The config's link section for --broker HOST:PORT [--key-file F]."""
    from edgegw.broker import parse_broker
    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        raise UserError(str(e))
    link = {"host": host, "port": port}
    if key_file:
        from edgefw import auth
        key = read_text(key_file, "--key-file").strip()
        try:
            auth.parse_key(key)
        except ValueError as e:
            raise UserError("--key-file %s: %s" % (key_file, e))
        link["key"] = key
    return link


def live_line(sim, extra=""):
    s = sim.summary()
    t = time.gmtime(s["t"])
    return ("%02d:%02d:%02d grid %6d W  pv %5d W  it %5d W  aux %4d W  bat %6d W  "
            "soc %5.1f %%  PCS set %6d W run %d%s" % (
                t.tm_hour, t.tm_min, t.tm_sec, s["grid_w"], s["pv_w"], s["it_w"], s["aux_w"],
                s["bat_w"], s["soc_cpct"] / 100.0, s["p_set_w"], s["run"],
                _units(s) + extra))


def _units(s):
    """Several PCS (simmulti.py): each one's setpoint, after the total."""
    pcs = s.get("pcs")
    if not pcs:
        return ""
    return " (%s)" % " ".join("%s %d" % (n, p["p_set_w"]) for n, p in pcs.items())


def run_live(sim, duration, every=1.0, stats=None):
    """Print the live line until Ctrl-C (or duration real seconds)."""
    tty = sys.stdout.isatty()
    t_end = None if duration is None else time.monotonic() + duration
    try:
        while t_end is None or time.monotonic() < t_end:
            line = live_line(sim, stats() if stats else "")
            if tty:
                sys.stdout.write("\r" + line + "\x1b[K")
                sys.stdout.flush()
            else:
                print(line, flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        pass
    if tty:
        print()


@click.command()
@click.option("--dir", "dirpath", type=click.Path(file_okay=False),
              help="The gateway's filesystem directory (default: a new temporary one).")
@click.option("--speed", type=click.IntRange(1, 3600), default=1, show_default=True,
              help="Site clock speed-up over real time (bus timing stays real).")
@click.option("--scenario", default="sunny", show_default=True,
              help="Built-in (sunny, cloudy, night, steady) or a JSON file: site parameters "
                   "plus pv/it/aux profiles, start_h, soc_init_cpct.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Gateway config JSON (default: the typical two-bus site).")
@click.option("--heapsize", default=DEFAULT_HEAP, show_default=True, callback=heapsize_opt,
              help="MicroPython heap of the 64-bit unix port compiling from source (not "
                   "the board's figure: make bench mem measures that on 32-bit).")
@click.option("--pace/--no-pace", default=False,
              help="Simulated devices answer at the bus baud rate's pace.")
@click.option("--duration", type=click.FloatRange(0), help="Stop after this many real seconds.")
@click.option("--broker", metavar="HOST:PORT",
              help="Turn the gateway's MQTT link on to this broker (config link section).")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="With --broker: the device key (hex) commands are signed with "
                   "(`edgegw link keygen -o key.hex`); without it every command is rejected.")
@click.option("--status-s", type=click.IntRange(0, 3600), default=None,
              help="Telemetry period in site seconds (default 10 with --broker, else the "
                   "config's).")
@click.option("--device-id", help="The gateway's device_id (default the config's).")
def cli(dirpath, speed, scenario, config_path, heapsize, pace, duration, broker, key_file,
        status_s, device_id):
    """Run the virtual gateway against a simulated site (Ctrl-C stops it).

    \b
    edgegw sil --speed 10
    edgegw link keygen -o key.hex
    edgegw sil --speed 10 --broker 127.0.0.1:1883 --key-file key.hex
    """
    if key_file and not broker:
        raise UserError("--key-file needs --broker (the key signs the link's commands)")
    from edgegw.vgw import VirtualGateway, site_config
    sc, site_params = load_scenario(scenario)
    kept, cfg = (False, None) if config_path else existing_config(dirpath)
    if cfg is None:
        cfg = read_config(config_path) if config_path else site_config()
    if site_params and not kept:
        cfg["site"] = dict(cfg.get("site") or {}, **site_params)
    if kept and (broker or status_s is not None or device_id):
        raise UserError("--dir %s holds a config.json, which sil keeps: --broker, --status-s "
                        "and --device-id would not apply (push a config instead)" % dirpath)
    if broker:
        cfg["link"] = link_section(broker, key_file)
        cfg["status_s"] = 10 if status_s is None else status_s
    elif status_s is not None:
        cfg["status_s"] = status_s
    if device_id:
        cfg["device_id"] = device_id
    try:
        from edgefw import dispatch
        dispatch.validate_params(dict(cfg["site"]))
    except ImportError:
        pass
    except ValueError as e:
        raise UserError("scenario/config site parameters: %s" % e)
    sim = make_site(sc, cfg)
    gw = VirtualGateway(dirpath, cfg, sim, speed=speed, heapsize=heapsize, pace=pace,
                        write_config=not kept)
    try:
        gw.start()
    except (RuntimeError, OSError) as e:
        raise UserError("virtual gateway did not start: %s" % str(e).splitlines()[0])
    err = boot_error(gw)
    if err:
        gw.close()
        hint = "; try a bigger --heapsize (%s)" % DEFAULT_HEAP if "MemoryError" in err else ""
        raise UserError("the firmware did not start (%s)%s" % (err, hint))
    try:
        click.echo("virtual gateway: %s (micropython heap %s, clock x%d)" % (gw.dir, heapsize, speed))
        if kept:
            click.echo("config: kept the config.json already in %s" % gw.dir)
        if cfg.get("link", {}).get("host"):
            click.echo("link: %s as %s, telemetry every %s site s%s" % (
                broker, cfg.get("device_id"), cfg.get("status_s"),
                "" if cfg["link"].get("key") else "; no key: every command is rejected"))
        click.echo("site clock: %s UTC (x%d): sign commands on it (link ... --ts gateway)"
                   % (time.strftime("%Y-%m-%d %H:%M", time.gmtime(sim.t)), speed))
        click.echo("REPL: %s" % gw.repl_port)
        click.echo("  mpremote connect %s resume exec \"from edgefw import app; "
                   "print(app.status(False))\"" % gw.repl_port)
        for b in cfg["buses"]:
            devs = ", ".join("%s@%d %s" % (d["name"], d["slave"], d["map"])
                             for d in cfg["devices"] if d["bus"] == b["name"])
            click.echo("%s: %s %d baud: %s" % (b["name"], gw.bus_ports[b["name"]],
                                              b["baud"], devs))
        click.echo("site (simulated truth; PCS set = what the gateway wrote):")

        def stats():
            if not gw.alive():
                return "  [gateway exited]"
            return "  frames %d" % sum(b.frames for b in gw.buses.values())
        run_live(sim, duration, stats=stats)
    finally:
        gw.close()
    if not gw.alive() and gw.proc.returncode not in (0, None, -15, -9):
        click.echo(gw.output[-2000:])
