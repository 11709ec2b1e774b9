"""`edgegw config validate|push|pull|diff|template`: the gateway's one JSON config file.

Validation is the firmware's own (edgefw.config.validate), plus the register maps named by
devices (protocols.regmap) and the dispatch parameters (edgefw.dispatch) when those modules
are there. `push` writes through the device's own config.write_atomic: the text travels
first into device RAM, and only a complete transfer is written (temp file + rename + CRC
trailer), so an interrupted push leaves the old config in place."""
import difflib
import glob
import json
import os

import click

from edgegw.cli import UserError, open_out, out_path, read_text
from edgegw.console_io import Device

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
DEVICE_PATH = "config.json"
CHUNK = 1024


def _fwconfig():
    from edgefw import config
    return config


def check(cfg):
    """All problems with a parsed config, each "field: problem"."""
    errs = _fwconfig().validate(cfg)
    if not isinstance(cfg, dict):
        return errs
    try:
        from protocols import regmap
    except ImportError:
        regmap = None
    devs = cfg.get("devices")
    if regmap is not None and isinstance(devs, list):
        for i, d in enumerate(devs):
            if not isinstance(d, dict) or not isinstance(d.get("map"), str):
                continue
            try:
                m = regmap.load(d["map"])
            except Exception as e:  # RegMapError or a missing file
                errs.append("devices[%d].map: %s" % (i, e))
                continue
            for p in d.get("points") or ():
                if isinstance(p, str) and p not in m.points:
                    errs.append("devices[%d].points: %r is not in map %s" % (i, p, d["map"]))
    site = cfg.get("site")
    if isinstance(site, dict) and site:
        try:
            from edgefw import dispatch
        except ImportError:
            dispatch = None
        if dispatch is not None:
            for msg in dispatch.check_params(dict(site))[1]:
                errs.append(msg if msg.startswith("site") else "site: " + msg)
    return errs


def load_file(path):
    """(cfg, errors) from a local file; JSON with or without the CRC trailer."""
    text = read_text(path, "FILE")
    cfg, errs = _fwconfig().parse(text)
    if errs:  # not cfg is None: a file holding JSON null parses without errors
        return None, errs
    return cfg, check(cfg)


def _pretty(cfg):
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


SECRETS = ("key", "password", "token")     # link fields never printed in clear by default


def masked(cfg):
    """A copy with link secrets replaced by a fingerprint (a diff still shows they differ)."""
    import hashlib
    link = cfg.get("link") if isinstance(cfg, dict) else None
    if not isinstance(link, dict):
        return cfg
    link = dict(link)
    for k in SECRETS:
        if isinstance(link.get(k), str) and link[k]:
            fp = hashlib.sha256(link[k].encode()).hexdigest()[:8]
            link[k] = "<secret sha256:%s, --show-secrets to print>" % fp
    return dict(cfg, link=link)


show_secrets_opt = click.option("--show-secrets", is_flag=True,
                                help="Print link.key/password in clear (masked by default).")


def templates():
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(TEMPLATES_DIR,
                                                                            "*.json")))


def template(name):
    path = os.path.join(TEMPLATES_DIR, name + ".json")
    if not os.path.exists(path):
        raise UserError("NAME %r is not a template; choose one of: %s"
                        % (name, ", ".join(templates())))
    with open(path) as f:   # shipped with the toolkit
        return json.load(f)


def _need_valid(path):
    cfg, errs = load_file(path)
    if errs:
        raise UserError("%s is not valid, nothing pushed:\n  %s\nFix the fields above "
                        "(edgegw config validate %s)" % (path, "\n  ".join(errs), path))
    return cfg


# ---- device side ---------------------------------------------------------------------------

def device_text(dev):
    raw = dev.read(DEVICE_PATH)
    return None if raw is None else raw.decode("utf-8", "replace")


def push_text(dev, text):
    """Send text into device RAM in chunks, then one call writes it atomically."""
    dev.exec("_cp=[]")
    for i in range(0, len(text), CHUNK):
        dev.exec("_cp.append(%r)" % text[i:i + CHUNK])
    dev.exec("from edgefw import config as _C\n_C.write_atomic(%r, ''.join(_cp))\ndel _cp"
             % DEVICE_PATH)


def push(dev, cfg):
    text = _fwconfig().dumps(cfg)
    try:
        dev.exec("from edgefw import config")
    except UserError:
        raise UserError("the gateway has no edgefw.config: run `edgegw deploy` first")
    push_text(dev, text)
    back = device_text(dev)
    if back != text:
        raise UserError("read-back of %s differs from what was sent: push again" % DEVICE_PATH)
    return text


def pull(dev):
    """The device's config (parsed, CRC checked) or UserError."""
    text = device_text(dev)
    if text is None:
        raise UserError("the gateway has no %s (it runs the factory default): push one"
                        % DEVICE_PATH)
    cfg, errs = _fwconfig().parse(text)
    if cfg is None:
        raise UserError("%s on the gateway is damaged: %s" % (DEVICE_PATH, "; ".join(errs)))
    return cfg


# ---- commands --------------------------------------------------------------------------------

@click.group()
def cli():
    """Validate, push, pull and diff the gateway's config.json; site templates.

    \b
    edgegw config template two-bus > site.json
    edgegw config validate site.json
    edgegw config push site.json --port /dev/ttyUSB0
    edgegw config diff site.json --port /dev/ttyUSB0
    """


port_opt = click.option("--port", "-p", required=True, help="The gateway's REPL port (URL).")
baud_opt = click.option("--baud", "-b", default=115200, show_default=True,
                        type=click.IntRange(300, 4000000))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {file, valid, errors} as JSON.")
def validate(file, as_json):
    """Check FILE against the firmware's schema; each error names its field."""
    cfg, errs = load_file(file)
    if as_json:
        click.echo(json.dumps({"file": file, "valid": not errs, "errors": errs}, indent=2))
        if errs:
            raise SystemExit(1)
        return
    if errs:
        raise UserError("%s: %d problem(s):\n  %s" % (file, len(errs), "\n  ".join(errs)))
    click.echo("%s: valid (%d buses, %d devices)" % (file, len(cfg["buses"]),
                                                     len(cfg["devices"])))


@cli.command("push")
@click.argument("file", type=click.Path(dir_okay=False))
@port_opt
@baud_opt
@click.option("--reset", is_flag=True, help="Soft-reset the gateway to apply it.")
def push_cmd(file, port, baud, reset):
    """Validate FILE, then write it atomically as the gateway's config.json."""
    cfg = _need_valid(file)
    with Device(port, baud) as dev:
        text = push(dev, cfg)
        if reset:
            dev.soft_reset()
    click.echo("pushed %s -> %s:%s (%d bytes, CRC %s)" % (file, port, DEVICE_PATH, len(text),
                                                         text.rsplit(" ", 1)[-1].strip()))


@cli.command("pull")
@port_opt
@baud_opt
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Write to a file (in full, secrets included: it can be pushed back).")
@show_secrets_opt
def pull_cmd(port, baud, out, show_secrets):
    """Print the gateway's config.json (pretty JSON, CRC trailer checked and removed)."""
    if out:
        out_path(out, "--out")
    with Device(port, baud) as dev:
        cfg = pull(dev)
    if out:
        with open_out(out, "--out") as f:
            f.write(_pretty(cfg))
        click.echo("wrote %s" % out, err=True)
    else:
        click.echo(_pretty(cfg if show_secrets else masked(cfg)), nl=False)


@cli.command("diff")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("other", required=False, type=click.Path(dir_okay=False))
@click.option("--port", "-p", help="Compare with the gateway's config (instead of OTHER).")
@baud_opt
@show_secrets_opt
def diff_cmd(file, other, port, baud, show_secrets):
    """Unified diff from FILE to OTHER, or from the gateway's config to FILE (--port: what
    a push would change). Exit code 0 = same, 1 = different (like diff)."""
    if (other is None) == (port is None):
        raise UserError("give either OTHER or --port to compare FILE with")
    a, errs = load_file(file)
    if a is None:
        raise UserError("%s: %s" % (file, "; ".join(errs)))
    if port:
        with Device(port, baud) as dev:
            b = pull(dev)
        bname = "%s:%s" % (port, DEVICE_PATH)
    else:
        b, errs = load_file(other)
        if b is None:
            raise UserError("%s: %s" % (other, "; ".join(errs)))
        bname = other
    _fwconfig().validate(b)  # both with defaults filled in: only real differences show
    if not show_secrets:
        a, b = masked(a), masked(b)
    old, new, oname, nname = (b, a, bname, file) if port else (a, b, file, bname)
    d = list(difflib.unified_diff(_pretty(old).splitlines(True), _pretty(new).splitlines(True),
                                  oname, nname))
    if not d:
        click.echo("same")
        return
    click.echo("".join(d), nl=False)
    raise SystemExit(1)


@cli.command("template")
@click.argument("name", required=False)
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write to a file.")
def template_cmd(name, out):
    """Print site template NAME (without NAME: list them)."""
    if not name:
        for n in templates():
            click.echo("%-16s %s" % (n, template(n).get("note", "")))
        return
    text = json.dumps(template(name), indent=2) + "\n"
    if out:
        with open_out(out, "--out") as f:
            f.write(text)
        click.echo("wrote %s" % out, err=True)
    else:
        click.echo(text, nl=False)
