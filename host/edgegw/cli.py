"""`edgegw` command line. Each subcommand lives in its own module `edgegw.cmd_<name>`
exposing `cli` (a click command or group), so commands can be added independently."""
import importlib

import click

# order is the order `edgegw --help` lists them
COMMANDS = ("flash", "deploy", "config", "status", "console", "read", "scan", "trace", "replay",
            "sim", "sil",
            "dispatch", "link", "report", "tracker")


class UserError(click.ClickException):
    """A user mistake: printed as 'Error: ...' without a traceback, exit code 2."""
    exit_code = 2


class _Commands(click.Group):
    """Loads `edgegw.cmd_<name>` on first use: a command module may import edgegw.cli
    (for UserError) before the group exists, and `edgegw --help` stays quick."""

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
