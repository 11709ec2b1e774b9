"""`edgegw sim`: the simulated site (BMS, PCS, meters answering Modbus RTU from the shared
register maps) on real serial ports or ptys, for a real gateway board on the bench."""
import os
import pty
import tty

import click

from edgegw.cli import UserError
from edgegw.cmd_sil import load_scenario, make_site, read_config, run_live


def _parse_bus(spec):
    if "=" not in spec:
        raise UserError("--bus %r: expected NAME=PORT (PORT a serial device or 'pty')" % spec)
    name, port = spec.split("=", 1)
    if not name or not port:
        raise UserError("--bus %r: expected NAME=PORT" % spec)
    return name, port


def _open(port, b):
    """(stream for SimBus, path shown to the user, fds to close)."""
    if port == "pty":
        m, s = pty.openpty()
        tty.setraw(s)
        return m, os.ttyname(s), [m, s]
    import serial
    try:
        ser = serial.Serial(port, b.get("baud", 9600), parity=b.get("parity", "N"),
                            stopbits=b.get("stop", 1), timeout=0)
    except (serial.SerialException, ValueError) as e:
        raise UserError("--bus %s=%s: %s" % (b["name"], port, e))
    return ser, port, [ser]


@click.command()
@click.option("--bus", "buses", multiple=True, metavar="NAME=PORT",
              help="Serve the config's bus NAME on PORT (a serial device, or 'pty' to make "
                   "one and print its path). Repeatable.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Gateway config naming the devices per bus (default: the typical site).")
@click.option("--scenario", default="sunny", show_default=True,
              help="Built-in (sunny, cloudy, night, steady) or a scenario JSON file.")
@click.option("--speed", type=click.IntRange(1, 3600), default=1, show_default=True,
              help="Site physics speed-up (the board's own clock runs real time).")
@click.option("--pace/--no-pace", default=False,
              help="Hold answers for the wire time at the bus baud (ptys have no baud).")
@click.option("--duration", type=float, help="Stop after this many real seconds.")
def cli(buses, config_path, scenario, speed, pace, duration):
    """Simulated devices on serial ports for a real gateway (Ctrl-C stops)."""
    from edgegw.simdev import SimBus, SimDevice
    from edgegw.vgw import site_config
    if not buses:
        raise UserError("--bus: give at least one NAME=PORT (e.g. --bus bus0=/dev/ttyUSB0)")
    cfg = read_config(config_path) if config_path else site_config()
    names = [b["name"] for b in cfg["buses"]]
    sc, _ = load_scenario(scenario)
    sim = make_site(sc, cfg)
    served = []
    closers = []
    try:
        for spec in buses:
            name, port = _parse_bus(spec)
            if name not in names:
                raise UserError("--bus %s: no bus %r in the config (%s)"
                                % (spec, name, ", ".join(names)))
            b = cfg["buses"][names.index(name)]
            devs = [SimDevice(d["map"], d["slave"], d["role"], site=sim, name=d["name"])
                    for d in cfg["devices"] if d["bus"] == name]
            stream, path, fds = _open(port, b)
            closers += fds
            sb = SimBus(stream, devs, b.get("baud", 9600), pace, name).start()
            served.append(sb)
            click.echo("%s: %s %d baud: %s" % (name, path, b.get("baud", 9600), ", ".join(
                "%s@%d %s" % (d.name, d.slave, d.map.name) for d in devs)))
        stop = sim.start_clock(speed)
        run_live(sim, duration, stats=lambda: "  frames %d" % sum(b.frames for b in served))
        stop.set()
    finally:
        for sb in served:
            sb.stop()
        for c in closers:
            try:
                c.close() if hasattr(c, "close") else os.close(c)
            except OSError:
                pass
