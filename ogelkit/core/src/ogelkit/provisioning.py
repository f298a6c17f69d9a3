"""Onboarding steps shared by the CLI and the admin API: tenants with a generated password,
password rotation, tenant databases provisioned through their backend, and removal.

``ctx`` is anything with ``store``, ``backends`` and ``directory`` (a running gateway's
context, or the CLI's tool context).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ogelkit.control.records import DatabaseRecord, TenantRecord
from ogelkit.scram import make_verifier

#: A tenant slug; also what the front doors accept as a user name.
SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
#: A database name: lower-case letters, digits, '_' and '-', starting with a letter.
DATABASE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
SLUG_RULE = "lower-case letters, digits and '-', starting with a letter, at most 63 characters"
NAME_RULE = ("lower-case letters, digits, '_' and '-', starting with a letter, at most 40 "
             "characters")


def database_json(d: DatabaseRecord) -> dict[str, Any]:
    """A tenant database as the CLI's ``--json`` and the admin API show it: where it lives
    and its lifecycle (state, last client, last cold start, a pending sleep/wake request).
    Upstream credentials are never shown."""
    return {"tenant": d.tenant, "name": d.name, "kind": d.kind, "backend": d.backend,
            "state": d.state, "created_at": d.created_at,
            "last_active_at": d.last_active_at or None,
            "last_cold_start_at": d.last_cold_start_at,
            "last_cold_start_seconds": d.last_cold_start_seconds,
            "state_changed_at": d.state_changed_at or None,
            "requested_state": d.requested_state}


def new_password() -> str:
    return secrets.token_urlsafe(24)


async def create_tenant(store: Any, slug: str, tier: str) -> tuple[TenantRecord, str]:
    """The new tenant and its generated password (shown once; only a verifier is kept)."""
    if not SLUG.match(slug):
        raise ValueError(f"tenant slug: {SLUG_RULE}")
    password = new_password()
    tenant = await store.create_tenant(slug, tier)
    await store.set_verifier(slug, str(make_verifier(password)))
    return tenant, password


async def rotate_password(store: Any, slug: str) -> str:
    """A new generated password for ``slug`` (``NotFound`` when there is no such tenant)."""
    password = new_password()
    await store.set_verifier(slug, str(make_verifier(password)))
    return password


def backend_port(ctx: Any, backend: Any) -> int:
    """The gateway port a backend's clients connect to (for connection strings): the one
    this gateway bound when it runs (``port = 0`` picks a free one), else the config's."""
    bound = (getattr(ctx, "addresses", None) or {}).get(backend.protocol)
    if bound:
        return int(bound[0][1])
    door = getattr(backend, "frontdoor", None)
    return ctx.config.listen.port_for(backend.protocol, door.default_port if door else 0)


async def create_database(ctx: Any, tenant: TenantRecord, name: str, backend: Any,
                          **extra: Any) -> tuple[DatabaseRecord, str | None, str]:
    """Provision database ``name`` of ``tenant`` on ``backend`` (idempotent upstream) and
    record it. Returns the record, the tenant's new password when it had none yet (so the
    connection string works at once), and the connection string. ``extra`` are the
    backend's own provisioning options (Convex: deployment_url, admin_key ...)."""
    if not DATABASE_NAME.match(name):
        raise ValueError(f"database name: {NAME_RULE}")
    upstream = await backend.provision(tenant, name, ctx.directory.tier(tenant.tier), **extra)
    db = await ctx.store.put_database(DatabaseRecord(tenant.slug, name, backend.kind,
                                                     backend.name, upstream))
    password = None
    if await ctx.store.get_verifier(tenant.slug) is None:
        password = new_password()
        await ctx.store.set_verifier(tenant.slug, str(make_verifier(password)))
    dsn = backend.connection_string(tenant, db, password, ctx.config.gateway.public_host,
                                    backend_port(ctx, backend))
    return db, password, dsn


async def delete_database(ctx: Any, tenant: TenantRecord, db: DatabaseRecord) -> None:
    """Drop ``db`` upstream (through its backend) and forget it."""
    backend = ctx.backends.get(db.backend)
    if backend is None:
        raise LookupError(f"database {db.name} lives on backend {db.backend}, which this "
                          "config does not define; cannot drop it")
    await backend.deprovision(tenant, db)
    await ctx.store.delete_database(tenant.slug, db.name)


async def delete_tenant(ctx: Any, tenant: TenantRecord) -> None:
    """Drop every database of ``tenant`` upstream, then the tenant."""
    for db in await ctx.store.list_databases(tenant.slug):
        await delete_database(ctx, tenant, db)
    await ctx.store.delete_tenant(tenant.slug)
