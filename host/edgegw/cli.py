"""`edgegw` command line. Each subcommand lives in its own module `edgegw.cmd_<name>`
exposing `cli` (a click command or group), so commands can be added independently."""
import importlib

import click

# order is the order `edgegw --help` lists them
COMMANDS = ("flash", "deploy", "config", "status", "console", "trace", "replay", "sim", "sil",
            "dispatch", "link", "report", "tracker")


class UserError(click.ClickException):
    """A user mistake: printed as 'Error: ...' without a traceback, exit code 2."""
    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegw")
def cli():
    """edgegw: field and bench toolkit for the edge compute node energy gateway.

    Shell completion: eval "$(_EDGEGW_COMPLETE=bash_source edgegw)" (zsh_source, fish_source).
    """


def _load():
    for name in COMMANDS:
        try:
            mod = importlib.import_module("edgegw.cmd_" + name)
        except ModuleNotFoundError as e:
            if e.name == "edgegw.cmd_" + name:
                continue
            raise
        cli.add_command(mod.cli, name)


_load()


def main():
    cli(prog_name="edgegw")
