"""``ogelkit databases create|list|delete``: provisioning is delegated to the backend."""

from __future__ import annotations

import time

import anyio
import click

from ogelkit import provisioning
from ogelkit.backend import Capability
from ogelkit.cli.common import (
    CliState,
    echo_json,
    echo_table,
    opened_store,
    require_tenant,
    run_async,
    tool_context,
)
from ogelkit.control.records import DatabaseRecord


@click.group()
def databases() -> None:
    """Provision and remove tenant databases."""


def _pick_backend(config, kind: str, backend_id: str | None) -> str:
    if backend_id is not None:
        spec = config.backends.get(backend_id)
        if spec is None:
            raise click.BadParameter(f'no backend "{backend_id}" (defined: '
                                     f'{", ".join(config.backends) or "none"})', param_hint="--backend")
        if spec.type != kind:
            raise click.BadParameter(f'backend "{backend_id}" is of type {spec.type}, not {kind}',
                                     param_hint="--backend")
        return backend_id
    matches = [s.id for s in config.backends.values() if s.type == kind]
    if not matches:
        kinds = sorted({s.type for s in config.backends.values()})
        raise click.BadParameter(f'no backend of kind "{kind}" in the config (kinds: '
                                 f'{", ".join(kinds) or "none"})', param_hint="--kind")
    if len(matches) > 1:
        raise click.BadParameter(f'several {kind} backends ({", ".join(matches)}): pick one with '
                                 "--backend", param_hint="--kind")
    return matches[0]


@databases.command("create")
@click.argument("tenant")
@click.argument("name")
@click.option("--kind", required=True, help="postgres, neon, redis, mongodb, convex ...")
@click.option("--backend", "backend_id", help="Backend id when several have this kind.")
@click.option("--deployment-url", help="convex: URL of the existing deployment to register.")
@click.option("--admin-key", help="convex: the deployment's admin or deploy key (stored "
                                  "encrypted).")
@click.option("--client-auth", type=click.Choice(["platform", "user"]),
              help="convex: platform (clients present the platform token) or user (clients' "
                   "own JWTs pass through to a deployment configured for end-user auth).")
@click.pass_obj
def create(state: CliState, tenant: str, name: str, kind: str, backend_id: str | None,
           deployment_url: str | None = None, admin_key: str | None = None,
           client_auth: str | None = None) -> None:
    """Provision database NAME of TENANT and print a connection string to the gateway."""
    # Backend-specific provisioning options, passed only when given (backends that take
    # none keep the plain provision(tenant, name, tier) signature).
    extra = {k: v for k, v in (("deployment_url", deployment_url), ("admin_key", admin_key),
                               ("client_auth", client_auth)) if v is not None}
    if not provisioning.DATABASE_NAME.match(name):
        raise click.BadParameter("lower-case letters, digits, '_' and '-', starting with a "
                                 "letter, at most 40 characters", param_hint="NAME")
    config = state.config()
    bid = _pick_backend(config, kind, backend_id)

    async def go():
        async with tool_context(config, state.plugins, [bid]) as ctx:
            record = await require_tenant(ctx.store, tenant)
            backend = ctx.backends[bid]
            # Idempotent: rerunning after a failure half-way finishes the job.
            try:
                db, password, dsn = await provisioning.create_database(ctx, record, name,
                                                                       backend, **extra)
            except TypeError:
                if not extra:
                    raise
                raise click.UsageError(f"backend kind {kind} takes no "
                                       f"{', '.join('--' + k.replace('_', '-') for k in extra)}"
                                       ) from None
            return record, db, password, dsn

    record, db, password, dsn = run_async(go)
    state.plugins.hooks.database_created(record, db)
    click.echo(f"created {kind} database {name} for {tenant} on backend {bid}")
    click.echo(f"connection string: {dsn}")
    if password:
        click.echo(f"password: {password}")
        click.echo("The password is shown only now; `ogelkit credentials rotate` makes a new one.")
    else:
        click.echo("Use the tenant's existing password (`ogelkit credentials rotate` if lost).")


@databases.command("list")
@click.argument("tenant", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(state: CliState, tenant: str | None, as_json: bool) -> None:
    """List databases (of one TENANT, or all)."""
    config = state.config(core_only=True)

    async def go():
        async with opened_store(config) as store:
            return await store.list_databases(tenant)

    dbs = run_async(go)
    if as_json:
        echo_json([provisioning.database_json(d) for d in dbs])
    else:
        echo_table([[d.tenant, d.name, d.kind, d.backend, d.state, _cold_start(d)] for d in dbs],
                   ["TENANT", "NAME", "KIND", "BACKEND", "STATE", "LAST COLD START"])


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _cold_start(d: DatabaseRecord) -> str:
    if d.last_cold_start_at is None:
        return "-"
    took = d.last_cold_start_seconds or 0.0
    return f"{_when(d.last_cold_start_at)} ({took * 1000:.0f} ms)"


@databases.command("delete")
@click.argument("tenant")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete(state: CliState, tenant: str, name: str, yes: bool) -> None:
    """Drop database NAME of TENANT upstream (terminating its sessions) and forget it."""
    config = state.config()

    async def go_find():
        async with opened_store(config) as store:
            return await store.get_database(tenant, name)

    db = run_async(go_find)
    if db is None:
        raise click.ClickException(f'tenant "{tenant}" has no database "{name}"')
    if db.backend not in config.backends:
        raise click.ClickException(f"database {name} lives on backend {db.backend}, which this "
                                   "config does not define")
    if not yes:
        click.confirm(f"Drop {db.kind} database {name} of {tenant}? Its data is lost.", abort=True)

    async def go():
        async with tool_context(config, state.plugins, [db.backend]) as ctx:
            record = await require_tenant(ctx.store, tenant)
            await provisioning.delete_database(ctx, record, db)

    run_async(go)
    click.echo(f"deleted database {name} of {tenant}")


@databases.command("show")
@click.argument("tenant")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(state: CliState, tenant: str, name: str, as_json: bool) -> None:
    """One database: kind, backend and lifecycle (state, last activity, last cold start)."""
    config = state.config(core_only=True)

    async def go():
        async with opened_store(config) as store:
            return await store.get_database(tenant, name)

    db = run_async(go)
    if db is None:
        raise click.ClickException(f'tenant "{tenant}" has no database "{name}"')
    if as_json:
        echo_json(provisioning.database_json(db))
        return
    for label, value in (("tenant", db.tenant), ("name", db.name), ("kind", db.kind),
                         ("backend", db.backend), ("state", db.state),
                         ("since", _when(db.state_changed_at)),
                         ("last client", _when(db.last_active_at)),
                         ("last cold start", _cold_start(db)),
                         ("requested", db.requested_state or "-"),
                         ("created", _when(db.created_at))):
        click.echo(f"{label + ':':17}{value}")


#: A scheduler heartbeat older than this means no gateway will apply a request.
_LEADER_FRESH = 5.0


def _lifecycle_command(action: str):
    want = "asleep" if action == "sleep" else "active"
    capability = Capability.SLEEP if action == "sleep" else Capability.WAKE

    @click.argument("tenant")
    @click.argument("name")
    @click.option("--wait", default=15.0, show_default=True, type=float,
                  help="Seconds to wait for a running gateway to apply the request.")
    @click.pass_obj
    def command(state: CliState, tenant: str, name: str, wait: float) -> None:
        config = state.config()
        fresh = max(_LEADER_FRESH, 3 * config.lifecycle.check_every)

        async def go() -> str:
            async with opened_store(config) as store:
                db = await store.get_database(tenant, name)
                if db is None:
                    raise click.ClickException(f'tenant "{tenant}" has no database "{name}"')
                spec = config.backends.get(db.backend)
                if spec is None:
                    raise click.ClickException(f"database {name} lives on backend {db.backend}, "
                                               "which this config does not define")
                if capability not in spec.cls.capabilities:
                    raise click.ClickException(f"backend type {spec.type} cannot {action} "
                                               "databases (they are always ready)")
                leader = await store.lifecycle_leader()
                if leader is not None and time.time() - leader[1] < fresh:
                    await store.request_database_state(tenant, name, want)
                    with anyio.move_on_after(wait):
                        while True:
                            current = await store.get_database(tenant, name)
                            if (current is not None and current.requested_state is None
                                    and current.state == want):
                                return f"gateway {leader[0]} applied it: {want}"
                            await anyio.sleep(0.2)
                    return (f"requested; gateway {leader[0]} applies it at its next "
                            "scheduler tick")
            # No gateway runs the scheduler: act on the backend directly.
            async with tool_context(config, state.plugins, [db.backend]) as ctx:
                backend = ctx.backends[db.backend]
                started = time.monotonic()
                if action == "sleep":
                    await backend.sleep(db)
                    await ctx.store.transition(tenant, name, "asleep", clear_request=True)
                    return "no gateway is running: put to sleep directly"
                await backend.wake(db)
                took = time.monotonic() - started
                await ctx.store.transition(tenant, name, "active", cold_start_seconds=took,
                                           clear_request=True)
                await ctx.store.touch_databases([(tenant, name, time.time())])
                return f"no gateway is running: woken directly in {took * 1000:.0f} ms"

        click.echo(f"{action} {tenant}/{name}: {run_async(go)}")

    command.__doc__ = (f"{action.capitalize()} database NAME of TENANT now. With a gateway "
                       "running, the request goes through the control plane and the gateway "
                       "that runs the lifecycle scheduler applies it; without one, the "
                       "backend is called directly.")
    return command


databases.command("sleep")(_lifecycle_command("sleep"))
databases.command("wake")(_lifecycle_command("wake"))
