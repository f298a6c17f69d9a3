"""``ogelkit databases branch|reset``: for backends that branch (``Capability.BRANCH/RESET``).

A branch is a new tenant database holding a copy of its parent's data as of now (Neon's
branches); reset throws a branch's changes away and takes the parent's current data again.
"""

from __future__ import annotations

import click

from ogelkit import provisioning
from ogelkit.backend import Capability
from ogelkit.cli.common import CliState, opened_store, require_tenant, run_async, tool_context
from ogelkit.cli.databases import databases
from ogelkit.control.records import DatabaseRecord


def _find(state: CliState, tenant: str, name: str) -> DatabaseRecord:
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            return await store.get_database(tenant, name)

    db = run_async(go)
    if db is None:
        raise click.ClickException(f'tenant "{tenant}" has no database "{name}"')
    if db.backend not in config.backends:
        raise click.ClickException(f"database {name} lives on backend {db.backend}, which this "
                                   "config does not define")
    return db


@databases.command("branch")
@click.argument("tenant")
@click.argument("name")
@click.option("--from", "parent_name", required=True, help="The database to branch from.")
@click.pass_obj
def branch(state: CliState, tenant: str, name: str, parent_name: str) -> None:
    """Create database NAME of TENANT as a branch of database --from (its data as of now)."""
    if not provisioning.DATABASE_NAME.match(name):
        raise click.BadParameter("lower-case letters, digits, '_' and '-', starting with a "
                                 "letter, at most 40 characters", param_hint="NAME")
    parent = _find(state, tenant, parent_name)
    config = state.config()

    async def go():
        async with tool_context(config, state.plugins, [parent.backend]) as ctx:
            record = await require_tenant(ctx.store, tenant)
            if await ctx.store.get_database(tenant, name) is not None:
                raise click.ClickException(f'tenant "{tenant}" already has a database "{name}"')
            backend = ctx.backends[parent.backend]
            if Capability.BRANCH not in backend.capabilities:
                raise click.ClickException(f"{backend.kind} databases cannot be branched "
                                           f"(backend {backend.name})")
            upstream = await backend.branch(record, parent, name, ctx.directory.tier(record.tier))
            db = await ctx.store.put_database(
                DatabaseRecord(tenant, name, backend.kind, backend.name, upstream))
            return record, db

    record, db = run_async(go)
    state.plugins.hooks.database_created(record, db)
    click.echo(f"created branch {name} of {parent_name} for {tenant} on backend {db.backend}")
    click.echo(f"connect as for {parent_name}, with database name {name}")


@databases.command("reset")
@click.argument("tenant")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def reset(state: CliState, tenant: str, name: str, yes: bool) -> None:
    """Reset branch NAME of TENANT to its parent's current data (its own changes are lost)."""
    db = _find(state, tenant, name)
    parent = db.upstream.get("parent")
    if not parent:
        raise click.ClickException(f"{name} is not a branch: it has no parent to reset to")
    if not yes:
        click.confirm(f"Reset {name} of {tenant} to {parent}? Its own changes are lost.",
                      abort=True)
    config = state.config()

    async def go():
        async with tool_context(config, state.plugins, [db.backend]) as ctx:
            record = await require_tenant(ctx.store, tenant)
            backend = ctx.backends[db.backend]
            if Capability.RESET not in backend.capabilities:
                raise click.ClickException(f"{backend.kind} databases cannot be reset "
                                           f"(backend {backend.name})")
            upstream = await backend.reset(record, db)
            if upstream is not None:
                await ctx.store.put_database(DatabaseRecord(
                    tenant, name, db.kind, db.backend, upstream, db.state, db.created_at))

    run_async(go)
    click.echo(f"reset {name} of {tenant} to {parent}")
