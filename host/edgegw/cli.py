"""`edgegw` command line. Each subcommand lives in its own module `edgegw.cmd_<name>`
exposing `cli` (a click command or group), so commands can be added independently."""
import errno
import importlib

import click

# order is the order `edgegw --help` lists them
COMMANDS = ("flash", "deploy", "config", "status", "console", "read", "scan", "trace", "replay",
            "sim", "sil",
            "dispatch", "link", "ota", "report", "tracker")


class UserError(click.ClickException):
    """A user mistake: printed as 'Error: ...' without a traceback, exit code 2."""
    exit_code = 2


# ---- the one way commands read input files and open output paths ---------------------------
# Every user mistake with a file (missing, a folder, unreadable, not UTF-8, not JSON, an output
# in a folder that does not exist) is one UserError line naming the option and the path.
# Library code (evalbench, replayer) passes its own error class as `error`.

def _name(path, what):
    return "%s %s" % (what, path) if what else str(path)


def read_bytes(path, what="", error=UserError):
    """The file's bytes, or `error` naming `what` (e.g. '--config') and the path.
    '-' is standard input."""
    if path == "-":
        import sys
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise error("%s: no such file" % _name(path, what))
    except IsADirectoryError:
        raise error("%s: is a folder, give a file" % _name(path, what))
    except OSError as e:
        raise error("%s: cannot read it (%s)" % (_name(path, what), e.strerror or e))


def read_text(path, what="", error=UserError):
    """The file as UTF-8 text (a BOM is dropped), or `error`."""
    data = read_bytes(path, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error("%s: not UTF-8 text (byte 0x%02x at offset %d): is it the right file?"
                        % (_name(path, what), data[e.start], e.start))


def read_json(path, what="", error=UserError):
    """The file parsed as JSON, or `error` naming where it is not JSON."""
    import json
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except ValueError as e:
        raise error("%s: not valid JSON (%s)" % (_name(path, what), str(e).splitlines()[0]))
    except RecursionError:
        raise error("%s: not JSON we read (nested too deep)" % _name(path, what))


def read_config(path, what=""):
    """(cfg, errors) of a gateway config file through the firmware's own parser (JSON with
    or without its CRC trailer); errors for what it cannot read at all."""
    from edgefw import config as fwconfig
    text = read_text(path, what)
    try:
        return fwconfig.parse(text)
    except RecursionError:
        raise UserError("%s: not a config we read (nested too deep)" % _name(path, what))


def out_path(path, what="", folder=False):
    """Check an output path can be written before the work starts: its folder exists and it
    is not a folder itself (folder=True: the path is a folder, made if its parent exists)."""
    import os
    path = str(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError("%s: folder %s does not exist" % (_name(path, what), parent))
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError("%s: is a file, give a folder" % _name(path, what))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError("%s: cannot make it (%s)" % (_name(path, what), e.strerror or e))
    elif os.path.isdir(path):
        raise UserError("%s: is a folder, give a file name" % _name(path, what))
    return path


def open_out(path, what="", mode="w"):
    """An output file opened for writing, or UserError."""
    out_path(path, what)
    try:
        return open(path, mode)
    except OSError as e:
        raise UserError("%s: cannot write it (%s)" % (_name(path, what), e.strerror or e))


_FILE_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG)


class _Commands(click.Group):
    """Loads `edgegw.cmd_<name>` on first use: a command module may import edgegw.cli
    (for UserError) before the group exists, and `edgegw --help` stays quick.

    Also the safety net under the helpers above: a file a command opened some other way
    that is missing, a folder, unwritable or not UTF-8, or input nested too deep, still
    ends as one Error line (exit 2), never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno not in _FILE_ERRNOS or not getattr(e, "filename", None):
                raise
            hint = " (does its folder exist?)" if e.errno == errno.ENOENT else ""
            raise UserError("%s: %s%s" % (e.filename, (e.strerror or str(e)).lower(), hint)) \
                from None
        except UnicodeDecodeError as e:
            raise UserError("an input file is not UTF-8 text (byte 0x%02x at offset %d)"
                            % (e.object[e.start], e.start)) from None
        except RecursionError:
            raise UserError("an input file is nested too deep to read") from None

    def list_commands(self, ctx):
        return [n for n in COMMANDS if self._module(n) is not None]

    def get_command(self, ctx, name):
        mod = self._module(name) if name in COMMANDS else None
        return None if mod is None else mod.cli

    @staticmethod
    def _module(name):
        try:
            return importlib.import_module("edgegw.cmd_" + name)
        except ModuleNotFoundError as e:
            if e.name == "edgegw.cmd_" + name:
                return None  # not built yet
            raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegw")
def cli():
    """edgegw: field and bench toolkit for the edge compute node energy gateway.

    Shell completion: eval "$(_EDGEGW_COMPLETE=bash_source edgegw)" (zsh_source, fish_source).
    """


def main():
    cli(prog_name="edgegw")
