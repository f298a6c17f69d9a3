"""``ogelkit run``, ``check``, ``plugins``, ``secret-key``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ogelkit.cli.common import CliState, echo_json, echo_table, load_or_exit
from ogelkit.config import options_table
from ogelkit.control.secrets import generate_key
from ogelkit.logs import setup_logging
from ogelkit.plugins import plugin_failure_lines


@click.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def run(state: CliState, config_file: str | None) -> None:
    """Run the gateway on CONFIG_FILE (or --config / OGELKIT_CONFIG)."""
    from ogelkit.runtime import StartupError, run_gateway

    config = state.config(config_file)
    setup_logging(config.gateway.log_level)
    try:
        run_gateway(config, state.plugins)
    except (StartupError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(e, StartupError) for e in leaves):
            raise
        for leaf in leaves:
            logging.getLogger("ogelkit.runtime").error("startup failed: %s", leaf)
        sys.exit(1)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@click.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def check(state: CliState, config_file: str | None) -> None:
    """Validate CONFIG_FILE completely without any I/O; exit 0 when valid, 2 otherwise."""
    path = config_file or state.config_path
    if path is None:
        raise click.UsageError("no config given: pass CONFIG_FILE, --config or OGELKIT_CONFIG")
    config = load_or_exit(path, state.plugins)
    protocols = ", ".join(f"{p} ({', '.join(ids)})" for p, ids in config.protocols().items())
    click.echo(f"{path}: ok")
    click.echo(f"  backends: {protocols or 'none'}")
    click.echo(f"  layers:   {', '.join(s.name for s in config.layers) or 'none'}")
    click.echo(f"  tiers:    {', '.join(config.tiers)}")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--options", is_flag=True, help="Also list each backend/layer type's options.")
@click.pass_obj
def plugins_cmd(state: CliState, as_json: bool, options: bool) -> None:
    """List installed plugins: name, kind, distribution, version, load status."""
    plugins = state.plugins
    rows: list[dict[str, Any]] = []
    for info in sorted(plugins.infos.values(), key=lambda i: i.name):
        kinds = [f"backend:{b}" for b in info.backends] + [f"layer:{x}" for x in info.layers]
        rows.append({"name": info.name, "provides": kinds, "distribution": info.distribution,
                     "version": info.version, "status": info.status, "error": info.error,
                     "hooks": info.hooks})
    if as_json:
        echo_json(rows)
    else:
        echo_table([[r["name"], ", ".join(r["provides"]) or "-", r["distribution"] or "-",
                     r["version"] or "-", r["status"]] for r in rows],
                   ["NAME", "PROVIDES", "DISTRIBUTION", "VERSION", "STATUS"])
        for line in plugin_failure_lines(plugins):
            click.echo("\n" + line, err=True)
        for line in plugins.errors:
            click.echo("\nerror: " + line, err=True)
        if options:
            for kind, table in (("backend", plugins.backends), ("layer", plugins.layers)):
                for name, cls in sorted(table.items()):
                    click.echo(f"\n{kind} {name}:")
                    for opt, typ, default, doc in options_table(cls.Config):
                        click.echo(f"  {opt} ({typ}; default {default}): {doc}")
    if plugins.failed or plugins.errors:
        sys.exit(1)


@click.command("secret-key")
def secret_key() -> None:
    """Print a new key for [control] secret_key (OGELKIT_SECRET_KEY)."""
    click.echo(generate_key())

