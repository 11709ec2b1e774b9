"""`edgegw tracker`: measure the node's compute load, forecast it from the job queue and send it
to the gateway; show the gateway's green headroom. docs/tracker.md."""
import json
import os
import time

import click

from edgegw.cli import UserError, read_json, read_text
from edgegw.tracker import Tracker
from edgegw.tracker import forecast as fc
from edgegw.tracker import publish as pub
from edgegw.tracker import queue as q
from edgegw.tracker import sources


def _sampler(p_idle, p_max):
    try:
        return sources.Sampler(p_idle_w=p_idle, p_max_w=p_max)
    except ValueError as e:
        raise UserError("--p-idle/--p-max: %s" % e)


def _model_opts(f):
    f = click.option("--p-max", type=click.IntRange(0, fc.MAX_W), default=300, show_default=True,
                     help="Model: server W at 100 % CPU (used when nothing meters power).")(f)
    f = click.option("--p-idle", type=click.IntRange(0, fc.MAX_W), default=100, show_default=True,
                     help="Model: server W at idle.")(f)
    return f


def _horizon_opts(f):
    f = click.option("--horizon", type=click.IntRange(1, pub.MAX_STEPS), default=240,
                     show_default=True, help="Forecast length in steps.")(f)
    f = click.option("--step", type=click.IntRange(pub.MIN_STEP_S, pub.MAX_STEP_S), default=60,
                     show_default=True,
                     help="Forecast step in s (W per step).")(f)
    f = click.option("--node-w", type=click.IntRange(0, fc.MAX_W), default=None,
                     help="W per node for jobs given as nodes (queue file default, squeue).")(f)
    return f


class _Jobs:
    """Job source for the tracker: queue file (re-read when it changes) and/or squeue."""

    def __init__(self, path, use_squeue, node_w):
        self.path = path
        self.use_squeue = use_squeue
        self.node_w = node_w
        self._mtime = None
        self._file_jobs = []
        self.error = None

    def __call__(self, now):
        jobs = []
        if self.path:
            try:
                m = os.stat(self.path).st_mtime_ns
                if m != self._mtime:      # '+N' starts count from when the file changed
                    self._file_jobs = q.load(self.path, now, self.node_w)
                    self._mtime = m
                self.error = None
            except (OSError, q.QueueError) as e:
                self.error = str(e)       # keep the last good jobs, say why
            jobs += self._file_jobs
        if self.use_squeue:
            try:
                jobs += q.squeue(self.node_w or 0, now)
            except q.QueueError as e:
                self.error = str(e)
        return jobs


def _runs(values, step_s):
    """Compress a W list into (from_s, to_s, W) runs for text output."""
    out = []
    for i, w in enumerate(values):
        if out and out[-1][2] == w:
            out[-1][1] = (i + 1) * step_s
        else:
            out.append([i * step_s, (i + 1) * step_s, w])
    return out


def _fmt_dur(s):
    return "%dh%02d" % (s // 3600, s % 3600 // 60) if s >= 3600 else "%dmin" % (s // 60) if s % 60 == 0 else "%ds" % s


@click.group()
def cli():
    """Compute-load tracker: real-time server power, job-queue forecast to the gateway,
    green headroom back to the scheduler."""


@cli.command()
@_model_opts
@click.option("--window", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds to average CPU utilisation and RAPL over.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def sample(p_idle, p_max, window, as_json):
    """One reading of the node's compute load, each figure with its source."""
    s = _sampler(p_idle, p_max)
    time.sleep(window)
    r = s.sample()
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
        return
    click.echo("measured %d W (source %s), CPU %.1f %%" % (r["measured_w"], r["source"],
                                                            r["util_pm"] / 10))
    for f in r["figures"]:
        parts = []
        if "w" in f:
            parts.append("%d W" % f["w"])
        if "util_pm" in f:
            parts.append("%.1f %%" % (f["util_pm"] / 10))
        click.echo("  %-8s %-14s %s" % (f["source"], f["name"], ", ".join(parts)))
    for k, why in sorted(r["unavailable"].items()):
        click.echo("  %-8s unavailable: %s" % (k, why))


@cli.command()
@click.option("--queue", "queue_file", type=click.Path(dir_okay=False), default=None,
              help="Queue file (JSON or CSV, docs/tracker.md).")
@click.option("--squeue", "use_squeue", is_flag=True, help="Also read Slurm's squeue.")
@_horizon_opts
@click.option("--base-w", type=click.IntRange(0, fc.MAX_W), default=0, show_default=True,
              help="Measured load now, added under the queue forecast.")
@click.option("--json", "as_json", is_flag=True, help="JSON: jobs and the W per step list.")
def forecast(queue_file, use_squeue, node_w, step, horizon, base_w, as_json):
    """Load forecast (W per step) from planned jobs."""
    if not queue_file and not use_squeue:
        raise UserError("--queue FILE or --squeue: give at least one job source")
    now = int(time.time())
    try:
        jobs = q.load(queue_file, now, node_w) if queue_file else []
        if use_squeue:
            jobs += q.squeue(node_w or 0, now)
    except q.QueueError as e:
        raise UserError(str(e))
    ql = q.load_w(jobs, now, step, horizon)
    total = fc.combine([base_w] * horizon, ql, q.running_w(jobs, now))
    if as_json:
        click.echo(json.dumps({"t0": now, "step_s": step, "load_w": total, "jobs": jobs},
                              sort_keys=True))
        return
    click.echo("%d job(s); forecast from now, %d x %d s:" % (len(jobs), horizon, step))
    for j in jobs:
        st = "queued (any moment)" if j["start"] is None else \
            "%+d s" % (j["start"] - now)
        click.echo("  %-12s %-8s start %-20s %s, %d W" % (j["id"], j["state"], st,
                                                         _fmt_dur(j["duration_s"]), j["power_w"]))
    for a, b, w in _runs(total, step):
        click.echo("  +%s..+%s  %d W" % (_fmt_dur(a), _fmt_dur(b), w))


@cli.command()
@click.option("--broker", required=True, help="MQTT broker host:port.")
@click.option("--device", "device_id", required=True, help="Gateway device id.")
@click.option("--queue", "queue_file", type=click.Path(dir_okay=False), default=None,
              help="Queue file (JSON or CSV), re-read when it changes.")
@click.option("--squeue", "use_squeue", is_flag=True, help="Also read Slurm's squeue.")
@click.option("--site-forecast", "site_file", type=click.Path(dir_okay=False), default=None,
              help="CSV t,pv_w[,aux_w] (t in the --clock time base): the PV / aux forecast "
                   "sent beside the compute one, re-read when it changes.")
@_horizon_opts
@_model_opts
@click.option("--interval", type=click.FloatRange(1, 3600), default=10, show_default=True,
              help="Seconds between measurements/messages.")
@click.option("--valid", type=click.IntRange(60, 86400), default=3600, show_default=True,
              help="Seconds the gateway may use a forecast (exp = ts + valid), fallback too.")
@click.option("--refresh", type=click.IntRange(1, 86400), default=300, show_default=True,
              help="Resend an unchanged forecast after this many s (changes go out at once).")
@click.option("--change-w", type=click.IntRange(0, fc.MAX_W), default=100, show_default=True,
              help="A step moving by more than max(this, 10 %) is a change to send.")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              envvar="EDGEGW_KEY_FILE", help="Device key (hex) to sign with [env EDGEGW_KEY_FILE] "
              "(`edgegw link keygen -o key.hex` makes one; the gateway's config link.key).")
@click.option("--unsigned", is_flag=True,
              help="Publish without a signature (only a gateway without link.key takes it).")
@click.option("--clock", type=click.Choice(["local", "gateway"]), default="local",
              show_default=True, help="Time base for t0: this host, or the gateway's telemetry ts.")
@click.option("--speed", type=click.IntRange(1, 3600), default=1, show_default=True,
              help="With --clock gateway: site seconds per real second (virtual gateway).")
@click.option("--measure", type=click.Choice(["host", "gateway"]), default="host",
              show_default=True, help="Measured load: this host's sources, or the gateway's "
              "IT-load meter (telemetry it_w, the whole node).")
@click.option("--once", is_flag=True, help="Measure, publish one forecast, exit.")
@click.option("--json", "as_json", is_flag=True, help="Print each message sent as JSON.")
def run(broker, device_id, queue_file, use_squeue, site_file, node_w, step, horizon, p_idle,
        p_max, interval, valid, refresh, change_w, key_file, unsigned, clock, speed, measure,
        once, as_json):
    """Measure, forecast and publish on edgegw/<device>/compute/forecast every --interval s."""
    key = None
    if key_file:
        from edgefw import auth
        try:
            key = auth.parse_key(read_text(key_file, "--key-file").strip())
        except ValueError as e:
            raise UserError("--key-file %s: %s" % (key_file, e))
    elif not unsigned:
        raise UserError("--key-file: a gateway with link.key rejects an unsigned forecast; "
                        "give the device key (edgegw link keygen -o key.hex) or --unsigned")
    if queue_file:
        read_text(queue_file, "--queue")
    jobs = _Jobs(queue_file, use_squeue, node_w) if (queue_file or use_squeue) else None
    s = _sampler(p_idle, p_max)
    if refresh >= valid:
        raise UserError("--refresh %d: must be below --valid %d" % (refresh, valid))
    site_fn = None
    if site_file:
        from edgegw.tracker.siteforecast import SiteForecastError, SiteForecastFile
        read_text(site_file, "--site-forecast")
        try:
            site_fn = SiteForecastFile(site_file)
        except SiteForecastError as e:
            raise UserError("--site-forecast %s" % e)
    tr = Tracker(jobs, step_s=step, steps=horizon, valid_s=valid, key=key, device_id=device_id,
                 refresh_s=refresh, change_w=change_w, site_fn=site_fn)
    if jobs:
        jobs(int(time.time()))       # a broken queue file is a user error at start
        if jobs.error:
            raise UserError(jobs.error)
        # read again at the first tick: '+N' starts count from that `now`, which with
        # --clock gateway is the gateway's (this host's time put a '+600' job in its past)
        jobs._mtime = None
    gwc = None
    try:
        p = pub.Publisher(broker, client_id="edgegw-tracker-%s-%d" % (device_id, os.getpid()))
        if clock == "gateway" or measure == "gateway":
            gwc = pub.GatewayClock(broker, device_id, speed)
    except (ConnectionError, ValueError) as e:
        raise UserError("--broker %s: %s" % (broker, e))
    try:
        time.sleep(min(interval, 1.0))   # psutil/RAPL need a window for the first figure
        waited = 0.0
        while True:
            t = time.monotonic()
            r = s.sample()
            now = r["ts"]
            if gwc is not None:
                gnow = gwc.now()
                if gnow is None:
                    if waited > max(30.0, 3 * interval):
                        raise UserError("no telemetry from %s in %d s (--clock/--measure gateway)"
                                        % (device_id, waited))
                    click.echo("waiting for telemetry from %s" % device_id, err=True)
                    time.sleep(1.0)
                    waited += 1.0
                    continue
                if clock == "gateway":
                    now = gnow
                if measure == "gateway":
                    it = gwc.rec.get("it_w")
                    if isinstance(it, int) and it >= 0:
                        r["measured_w"], r["source"] = it, "gateway"
            msg = tr.tick(now, r["measured_w"], r["source"], force=once)
            if msg is not None:
                p.send(device_id, msg)
            if msg is None:
                if not as_json:
                    click.echo("measured %d W (%s): forecast unchanged, not sent"
                               % (r["measured_w"], r["source"]))
            elif as_json:
                click.echo(json.dumps(msg, sort_keys=True))
            else:
                lw = msg["load_w"]
                n1h = max(1, min(len(lw), 3600 // step))
                click.echo("seq %d: measured %d W (%s)%s, next hour max %d W%s" % (
                    msg["seq"], r["measured_w"], r["source"],
                    ", ramp " + tr.sm.ramp if tr.sm.ramp else "", max(lw[:n1h]),
                    "; queue: " + jobs.error if jobs and jobs.error else ""))
                if site_fn is not None:
                    click.echo("  site forecast: %s" % (site_fn.error or ", ".join(
                        "%s %d steps" % (k, len(msg[k])) for k in ("pv_w", "aux_w") if k in msg)
                        or "does not reach the forecast's steps"))
            if once:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
    except KeyboardInterrupt:
        pass
    except ConnectionError as e:
        raise UserError(str(e))
    finally:
        p.close()
        if gwc:
            gwc.close()


def headroom_local(rec, site):
    """Headroom from one telemetry record and the site parameters, with the gateway's own
    function (dispatch.headroom): W of new compute the node can take from PV + storage without
    grid import, now and sustained for the next hour."""
    from edgefw import dispatch
    p = dispatch.validate_params(site)
    need = ("pv_w", "it_w", "aux_w", "soc_cpct")
    miss = [k for k in need if not isinstance(rec.get(k), int)]
    if miss:
        raise ValueError("telemetry: %s missing or not an integer" % ", ".join(miss))
    dcl = rec.get("dcl_w")
    now, h1 = dispatch.headroom(p, rec["soc_cpct"], rec["pv_w"], rec["it_w"], rec["aux_w"],
                                dcl if isinstance(dcl, int) else None)
    return {"headroom_w": now, "headroom_1h_w": h1}


@cli.command()
@click.option("--broker", required=True, help="MQTT broker host:port.")
@click.option("--device", "device_id", required=True, help="Gateway device id.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=5, show_default=True,
              help="Seconds to wait for the message.")
@click.option("--local", "site_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also compute it here from the latest telemetry and this site JSON "
                   "(battery_wh, soc_min_cpct, reserve_s, discharge_max_w, pcs_w, eta_d_milli).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def headroom(broker, device_id, timeout, site_file, as_json):
    """The gateway's published green headroom (edgegw/<device>/headroom, retained)."""
    site = None
    if site_file:
        site = read_json(site_file, "--local")
        try:
            if isinstance(site, dict) and isinstance(site.get("site"), dict):
                site = site["site"]           # a whole gateway config
            from edgefw import dispatch
            dispatch.validate_params(site)
        except (TypeError, ValueError) as e:
            raise UserError("--local %s: %s" % (site_file, e))
    try:
        pub.parse_broker(broker)
        got = pub.read_topic(broker, pub.topic(device_id, pub.topics.HEADROOM), timeout)
        out = {"published": got}
        if site is not None:
            rec = pub.read_topic(broker, pub.topic(device_id, pub.topics.TELEMETRY), timeout)
            out["telemetry_seq"] = rec.get("seq") if rec else None
            out["local"] = headroom_local(rec, site) if rec else None
            # what the gateway itself put in that record, to compare
            out["in_telemetry"] = {k: rec[k] for k in ("headroom_w", "headroom_1h_w")
                                   if rec and k in rec} if rec else None
    except (ConnectionError, ValueError) as e:
        raise UserError(str(e))
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    if got is None:
        click.echo("no headroom published by %s within %g s" % (device_id, timeout))
    else:
        age = int(time.time()) - got["ts"] if isinstance(got.get("ts"), int) else None
        click.echo("%s headroom: now %s W, next hour %s W%s" % (
            device_id, got.get("headroom_w"), got.get("headroom_1h_w"),
            "" if age is None else " (%d s old)" % age))
    if site is not None:
        if out["local"] is None:
            click.echo("no telemetry from %s within %g s: nothing to compute from" % (device_id, timeout))
        else:
            click.echo("computed here from telemetry seq %s: now %d W, next hour %d W" % (
                out["telemetry_seq"], out["local"]["headroom_w"], out["local"]["headroom_1h_w"]))
            t = out["in_telemetry"]
            if t:
                click.echo("the gateway's figures in that record: now %s W, next hour %s W" % (
                    t.get("headroom_w"), t.get("headroom_1h_w")))
