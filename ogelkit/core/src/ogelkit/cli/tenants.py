"""``ogelkit tenants ...`` and ``ogelkit credentials rotate``."""

from __future__ import annotations

import attrs
import click

from ogelkit import provisioning
from ogelkit.cli.common import CliState, echo_json, echo_table, opened_store, require_tenant, run_async
from ogelkit.config.errors import did_you_mean
from ogelkit.control.store import AlreadyExists, NotFound


def _check_tier(state: CliState, tier: str) -> None:
    tiers = state.config().tiers
    if tier not in tiers:
        hint = did_you_mean(tier, tiers)
        raise click.BadParameter(f'unknown tier "{tier}" (tiers: {", ".join(tiers)})'
                                 + (f". {hint}" if hint else ""), param_hint="--tier")




@click.group()
def tenants() -> None:
    """Create, inspect and change tenants."""


@tenants.command("create")
@click.argument("slug")
@click.option("--tier", default="free", show_default=True, help="Tier name.")
@click.pass_obj
def create(state: CliState, slug: str, tier: str) -> None:
    """Create tenant SLUG and print its generated password once."""
    from ogelkit.config.loader import _SLUG
    if not _SLUG.match(slug):
        raise click.BadParameter("lower-case letters, digits and '-', starting with a letter",
                                 param_hint="SLUG")
    _check_tier(state, tier)
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            try:
                return await provisioning.create_tenant(store, slug, tier)
            except AlreadyExists as exc:
                raise click.ClickException(str(exc)) from exc

    tenant, password = run_async(go)
    # The password first: a failing third-party hook must not lose it (the tenant exists).
    click.echo(f"created tenant {slug} (tier {tier})")
    click.echo(f"password: {password}")
    click.echo("The password is shown only now; `ogelkit credentials rotate` makes a new one.")
    state.plugins.hooks.tenant_created(tenant)


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(state: CliState, as_json: bool) -> None:
    """List tenants."""
    config = state.config(core_only=True)

    async def go():
        async with opened_store(config) as store:
            return await store.list_tenants(), await store.list_databases()

    rows, dbs = run_async(go)
    counts: dict[str, int] = {}
    for db in dbs:
        counts[db.tenant] = counts.get(db.tenant, 0) + 1
    if as_json:
        echo_json([{**attrs.asdict(t), "databases": counts.get(t.slug, 0)} for t in rows])
    else:
        echo_table([[t.slug, t.tier, t.status, counts.get(t.slug, 0)] for t in rows],
                   ["TENANT", "TIER", "STATUS", "DATABASES"])


@tenants.command("show")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(state: CliState, slug: str, as_json: bool) -> None:
    """Show a tenant, its tier's limits and its databases."""
    config = state.config(core_only=True)

    async def go():
        async with opened_store(config) as store:
            tenant = await require_tenant(store, slug)
            return tenant, await store.list_databases(slug), await store.get_verifier(slug)

    tenant, dbs, verifier = run_async(go)
    tier = config.tiers.get(tenant.tier)
    data = {**attrs.asdict(tenant), "has_password": verifier is not None,
            "limits": attrs.asdict(tier) if tier else None,
            "databases": [{"name": d.name, "kind": d.kind, "backend": d.backend,
                           "state": d.state} for d in dbs]}
    if as_json:
        echo_json(data)
        return
    click.echo(f"tenant   {tenant.slug}\ntier     {tenant.tier}\nstatus   {tenant.status}")
    click.echo(f"password {'set' if verifier else 'not set'}")
    if tier:
        from ogelkit.units import format_duration, format_size
        click.echo(f"limits   {tier.connections or 'unlimited'} connections, "
                   f"{tier.ops_per_second or 'unlimited'} ops/s (burst {tier.burst or 'unlimited'}), "
                   f"timeout {format_duration(tier.statement_timeout)}, "
                   f"work_mem {format_size(tier.work_mem)}, cost ceiling "
                   f"{tier.cost_ceiling or 'unlimited'}")
    click.echo("databases:")
    echo_table([[d.name, d.kind, d.backend, d.state] for d in dbs],
               ["NAME", "KIND", "BACKEND", "STATE"])


def _update(state: CliState, slug: str, **changes) -> None:
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            try:
                return await store.update_tenant(slug, **changes)
            except NotFound as exc:
                raise click.ClickException(str(exc)) from exc

    tenant = run_async(go)
    click.echo(f"tenant {tenant.slug}: tier {tenant.tier}, status {tenant.status}")


@tenants.command("set-tier")
@click.argument("slug")
@click.argument("tier")
@click.pass_obj
def set_tier(state: CliState, slug: str, tier: str) -> None:
    """Move tenant SLUG to TIER (applies to running gateways within seconds)."""
    _check_tier(state, tier)
    _update(state, slug, tier=tier)


@tenants.command("suspend")
@click.argument("slug")
@click.pass_obj
def suspend(state: CliState, slug: str) -> None:
    """Suspend a tenant: open sessions are closed, new ones refused."""
    _update(state, slug, status="suspended")


@tenants.command("resume")
@click.argument("slug")
@click.pass_obj
def resume(state: CliState, slug: str) -> None:
    """Lift a suspension."""
    _update(state, slug, status="active")


@tenants.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete(state: CliState, slug: str, yes: bool) -> None:
    """Delete a tenant and drop all of its databases upstream."""
    config = state.config()
    if not yes:
        click.confirm(f"Delete tenant {slug} and drop all its databases?", abort=True)
    from ogelkit.cli.common import tool_context

    async def go():
        async with tool_context(config, state.plugins) as ctx:
            tenant = await require_tenant(ctx.store, slug)
            try:
                await provisioning.delete_tenant(ctx, tenant)
            except LookupError as exc:
                raise click.ClickException(str(exc)) from exc

    run_async(go)
    click.echo(f"deleted tenant {slug}")


@click.group()
def credentials() -> None:
    """Manage tenant credentials (salted SCRAM verifiers; passwords are never stored)."""


@credentials.command("rotate")
@click.argument("slug")
@click.pass_obj
def rotate(state: CliState, slug: str) -> None:
    """Give tenant SLUG a new generated password and print it once."""
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            try:
                return await provisioning.rotate_password(store, slug)
            except NotFound as exc:
                raise click.ClickException(str(exc)) from exc

    password = run_async(go)
    click.echo(f"new password for {slug}: {password}")
    click.echo("Existing connections stay open; new ones need the new password.")
