"""`edgegw console`: the gateway's REPL, interactively (mpremote's terminal, no soft reset,
Ctrl-] to leave), or `--live`: a status view refreshed in place (see `edgegw status`)."""
import os
import sys
import time

import click

from edgegw.cli import UserError
from edgegw.cmd_status import get, render, with_source


def mpremote_argv(port, baud):
    exe = os.path.join(os.path.dirname(sys.executable), "mpremote")
    if not os.path.exists(exe):
        exe = "mpremote"
    argv = [exe, "connect", port]
    if baud != 115200:
        argv = [exe, "baud", str(baud), "connect", port]
    return argv + ["resume", "repl"]


def _check_opens(port, baud):
    """mpremote's own message on a wrong port is a paragraph and exit 1: say it our way."""
    import serial
    try:
        serial.serial_for_url(port, baudrate=baud, timeout=1).close()
    except (serial.SerialException, OSError, ValueError) as e:
        raise UserError("--port %s: cannot open it (%s); check the path (ls /dev/ttyUSB* "
                        "/dev/ttyACM*) and that no other program holds it"
                        % (port, str(e).strip().splitlines()[0][:160] if str(e) else e))


@click.command()
@with_source
@click.option("--live", is_flag=True, help="A refreshing status view instead of the REPL.")
@click.option("--every", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="With --live: seconds between refreshes.")
@click.option("--print-argv", is_flag=True, hidden=True)
def cli(port, baud, mqtt_broker, device_id, timeout, live, every, print_argv):
    """Talk to the gateway's REPL, or watch it live.

    \b
    edgegw console --port /dev/ttyUSB0          # REPL (Ctrl-] to exit)
    edgegw console --port /dev/pts/4 --live     # live point table
    edgegw console --mqtt broker.local --device-id edgegw-0001 --live
    """
    if not live:
        if not port:
            raise UserError("--port is needed for the interactive REPL (or use --live)")
        argv = mpremote_argv(port, baud)
        if print_argv:
            click.echo(" ".join(argv))
            return
        _check_opens(port, baud)
        click.echo("connected to %s: Ctrl-] to exit, Ctrl-C interrupts the REPL only"
                   % port, err=True)
        os.execv(argv[0], argv) if os.path.isabs(argv[0]) else os.execvp(argv[0], argv)
    n = 0
    try:
        while True:
            s = get(port, baud, mqtt_broker, device_id, True, timeout)
            n += 1
            click.clear()
            click.echo(render(s))
            click.echo("\n[%s] refresh %d every %g s, Ctrl-C to stop"
                       % (time.strftime("%H:%M:%S"), n, every))
            time.sleep(every)
    except KeyboardInterrupt:
        click.echo("")
