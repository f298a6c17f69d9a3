"""``ogelkit convex token TENANT DATABASE`` and ``ogelkit convex usage TENANT``."""

from __future__ import annotations

import click

from ogelkit.cli.common import CliState, echo_json, echo_table, opened_store, run_async
from ogelkit_convex.usage import FIELDS, function_usage


@click.group("convex")
def convex_group() -> None:
    """Convex databases: platform tokens and usage per function."""


@convex_group.command("token")
@click.argument("tenant")
@click.argument("database")
@click.pass_obj
def token_command(state: CliState, tenant: str, database: str) -> None:
    """Print the platform token of a convex DATABASE of TENANT (e.g. one seeded from the
    config); clients pass it to set_auth() or as Authorization: Bearer."""
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            return await store.get_database(tenant, database)

    db = run_async(go)
    if db is None or db.kind != "convex":
        raise click.ClickException(f'no convex database "{database}" of tenant "{tenant}"')
    click.echo(db.upstream["token"])


@convex_group.command("usage")
@click.argument("tenant")
@click.option("--database", help="Only this database.")
@click.option("--month", help="YYYY-MM (default: this month).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def usage_command(state: CliState, tenant: str, database: str | None, month: str | None,
                  as_json: bool) -> None:
    """Calls, errors, refusals, duration, bytes and subscription-seconds per udfPath."""
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            return await function_usage(store, tenant, database, month)

    usage = run_async(go)
    if as_json:
        echo_json(usage)
        return
    rows = [[db, path, *(f"{values[f]:g}" for f in FIELDS)]
            for db, paths in sorted(usage.items()) for path, values in sorted(paths.items())]
    echo_table(rows, ["database", "udfPath", *FIELDS])


def add_commands(cli: click.Group) -> None:
    if "convex" not in cli.commands:
        cli.add_command(convex_group)
