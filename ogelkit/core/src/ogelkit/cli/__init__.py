"""The ``ogelkit`` command line."""

from __future__ import annotations

import sys

import click

from ogelkit.cli import branches as _branches  # noqa: F401 (adds databases branch|reset)
from ogelkit.cli.common import CONFIG_ENV, CliState
from ogelkit.cli.databases import databases
from ogelkit.cli.gateway import check, plugins_cmd, run, secret_key
from ogelkit.cli.tenants import credentials, tenants
from ogelkit.cli.usage import usage


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-c", "--config", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help=f"Gateway config file (env {CONFIG_ENV}).")
@click.version_option(package_name="ogelkit-core", prog_name="ogelkit")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """ogelkit: run and operate the O7s multi-tenant database gateway."""
    ctx.obj = CliState(config_path)


for command in (run, check, plugins_cmd, secret_key, tenants, credentials, databases, usage):
    cli.add_command(command)


def _is_builtin(args: list[str]) -> bool:
    """Whether ``args`` name a command the core itself defines (``tenants list``, ``run``),
    as opposed to the root --help or a command a plugin adds (``tenants advise``)."""
    group: click.Group = cli
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config"):
            i += 2
            continue
        if arg.startswith("--config="):
            i += 1
            continue
        if arg.startswith("-"):
            return False  # --help, --version of a group: plugin commands are listed too
        command = group.commands.get(arg)
        if command is None:
            return False
        if not isinstance(command, click.Group):
            return True
        group = command
        i += 1
    return False


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    # Plugins may add commands. A built-in command does not need them loaded for that (a
    # control-plane command then imports no plugin at all); --help and plugin commands do.
    state = CliState()
    if not _is_builtin(args):
        try:
            state.plugins.hooks.add_commands(cli)
        except Exception as exc:  # a plugin's command must not make the CLI unusable
            click.echo(f"warning: a plugin failed to add commands: {exc!r}", err=True)
    cli.main(args=args, prog_name="ogelkit", obj=state)
