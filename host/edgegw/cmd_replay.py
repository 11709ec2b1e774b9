"""`edgegw replay TRACE --port URL`: the slaves of a captured trace, played to a gateway.

See edgegw/replayer.py for what is answered and how. Runs until Ctrl-C (or --duration);
`--raw` writes the trace as captured, with its timing, and ends with it."""
import json
import signal
import time

import click

from edgegw import replayer as rp
from edgegw.cli import UserError


class _Stop(Exception):
    pass


def faults_from(drop, corrupt_crc, delay, noise_burst, silent, faults_file, seed):
    try:
        if faults_file:
            f = rp.Faults.load(faults_file)
            # options given on the command line add to the file
            if drop:
                f.drop = drop
            if corrupt_crc:
                f.corrupt_crc = corrupt_crc
            if delay:
                f.delay_ms = delay
            if noise_burst:
                f.noise_burst = noise_burst
            f.silent += [rp.parse_silent(s) for s in silent]
            if seed is not None:
                f.seed = seed
            return f
        return rp.Faults(drop, corrupt_crc, delay, noise_burst, list(silent),
                         1 if seed is None else seed)
    except rp.FaultError as e:
        raise UserError(str(e))


prob = click.FloatRange(0.0, 1.0)


@click.command()
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("--port", "-p", required=True, help="pyserial URL of the bus adapter the "
              "gateway listens on: /dev/ttyUSB1, a pty, socket://host:port, loop://")
@click.option("--baud", "-b", type=click.IntRange(300, 4000000), default=None,
              help="Baud rate (default: the trace's).")
@click.option("--raw", is_flag=True, help="Write every frame as captured, with its timing.")
@click.option("--speed", type=click.FloatRange(0.01, 1000), default=1.0, show_default=True,
              help="Raw replay speed factor.")
@click.option("--duration", type=click.FloatRange(0, None), help="Stop after this many seconds.")
@click.option("--timing", type=click.Choice(["auto", "wire", "arrival"]), default="auto",
              show_default=True, help="wire: a write starts the frame (UART); arrival: a write "
              "delivers it whole (pty, TCP); auto from the URL.")
@click.option("--transport-us", "transport", default="auto", show_default=True, metavar="US|auto",
              help="Round trip the port's transport adds (both legs), taken off every response "
              "time; auto measures it for a pty, 0 for anything else.")
@click.option("--drop", type=prob, default=0.0, help="Drop a response with probability P.")
@click.option("--corrupt-crc", type=prob, default=0.0, help="Corrupt a CRC with probability P.")
@click.option("--delay", type=click.IntRange(0, 60000), default=0, metavar="MS",
              help="Delay every response by MS milliseconds more than recorded.")
@click.option("--noise-burst", type=prob, default=0.0,
              help="Random bytes on the line before a response, with probability P.")
@click.option("--silent", multiple=True, metavar="SLAVE@T0-T1",
              help="Slave silent from T0 to T1 s after the start (repeatable), e.g. 3@10-40.")
@click.option("--faults", "faults_file", type=click.Path(dir_okay=False),
              help='JSON: {"drop": 0.1, "corrupt_crc": 0.05, "delay_ms": 0, "noise_burst": 0, '
              '"silent": [{"slave": 3, "t0": 10, "t1": 40}], "seed": 1}')
@click.option("--seed", type=int, default=None, help="Random seed for the faults (default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the final statistics as JSON.")
def cli(trace_file, port, baud, raw, speed, duration, timing, transport, drop, corrupt_crc, delay,
        noise_burst, silent, faults_file, seed, as_json):
    """Play the slave devices of TRACE to a gateway on PORT.

    \b
    edgegw replay bms.jsonl --port /dev/ttyUSB1
    edgegw replay site.jsonl --port /dev/pts/7 --drop 0.1 --silent 3@10-40
    edgegw replay seplos.txt --port socket://127.0.0.1:5020 --raw
    """
    from edgegw.cmd_trace import read_trace
    header, recs = read_trace(trace_file)
    if transport != "auto":
        try:
            transport = int(transport)
            if not 0 <= transport <= 100000:
                raise ValueError
        except ValueError:
            raise UserError("--transport-us %s: give microseconds 0..100000 or auto" % transport)
    f = faults_from(drop, corrupt_crc, delay, noise_burst, silent, faults_file, seed)
    b = baud or (header.get("baud") if isinstance(header.get("baud"), int) else 9600)
    r = rp.Replayer(recs, b, f)
    if not r.table and not raw:
        raise UserError("TRACE %s has no requests to answer (is it empty, or a raw dump? try "
                        "--raw)" % trace_file)
    try:
        r.open(port, timing, transport)
    except Exception as e:
        raise UserError("--port %s: cannot open it (%s)" % (port, e))

    def on_term(signum, frame):
        raise _Stop()
    old = signal.signal(signal.SIGTERM, on_term)
    t0 = time.time()
    if not as_json:
        click.echo("replaying %s: slaves %s at %d baud on %s%s (Ctrl-C to stop)"
                   % (trace_file, ", ".join(str(s) for s in sorted(r.slaves)) or "-", b, port,
                      " raw" if raw else ""), err=True)
    try:
        if raw:
            r.play_raw(speed)
        else:
            r.serve(duration)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        r.stop()
    st = dict(r.stats, seconds=round(time.time() - t0, 3), transport_us=r.transport_us,
              faults=f.as_dict())
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        click.echo(" ".join("%s=%s" % (k, v) for k, v in st.items() if k != "faults" and v),
                   err=True)
