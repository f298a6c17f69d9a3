"""Upstream isolation per tenant: one role per tenant, one database per tenant database.

Every step checks before it acts, so rerunning after a failure half-way finishes the job.
The role logs in with a generated password that is stored (encrypted) in the control
plane; PostgreSQL receives only its SCRAM verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

import asyncpg

from ogelkit.scram import make_verifier
from ogelkit_postgres.wire import quote_ident, quote_literal

log = logging.getLogger("ogelkit.postgres")

MAX_IDENT = 63


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def _fit(name: str) -> str:
    """Identifiers longer than PostgreSQL's 63 bytes keep a hash of the full name."""
    if len(name) <= MAX_IDENT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:MAX_IDENT - 11]}_{digest}"


def role_name(prefix: str, tenant: str) -> str:
    return _fit(prefix + _clean(tenant))


def database_name(prefix: str, tenant: str, name: str) -> str:
    return _fit(f"{prefix}{_clean(tenant)}__{_clean(name)}")


def _opaque(key: str, *parts: str) -> str:
    """20 hex digits of an HMAC of ``parts`` under the control plane's key: stable for a
    tenant (its second database finds its role), meaningless to anyone without the key."""
    mac = hmac.new(hashlib.sha256(b"ogelkit upstream names\0" + key.encode()).digest(),
                   "\0".join(parts).encode(), hashlib.sha256)
    return mac.hexdigest()[:20]


def opaque_role_name(prefix: str, key: str, tenant: str) -> str:
    return f"{prefix}r{_opaque(key, 'role', tenant)}"


def opaque_database_name(prefix: str, key: str, tenant: str, name: str) -> str:
    return f"{prefix}d{_opaque(key, 'database', tenant, name)}"


def new_password() -> str:
    return secrets.token_urlsafe(32)


def connection_limit(tier_connections: int | None, reserve: int) -> int:
    return -1 if tier_connections is None else tier_connections + reserve


async def ensure_role(conn: asyncpg.Connection, role: str, password: str, limit: int) -> None:
    verifier = str(make_verifier(password))
    attrs = (f"LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
             f"CONNECTION LIMIT {int(limit)} PASSWORD {quote_literal(verifier)}")
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        try:
            await conn.execute(f"CREATE ROLE {quote_ident(role)} {attrs}")
            return
        except asyncpg.DuplicateObjectError:
            pass  # created concurrently: fall through to ALTER
    await conn.execute(f"ALTER ROLE {quote_ident(role)} {attrs}")


async def ensure_database(conn: asyncpg.Connection, dbname: str, owner: str) -> None:
    if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname):
        try:
            # template0: nobody can be connected to it, so creation never fails on
            # "source database is being accessed by other users".
            await conn.execute(f"CREATE DATABASE {quote_ident(dbname)} OWNER "
                               f"{quote_ident(owner)} TEMPLATE template0")
        except asyncpg.DuplicateDatabaseError:
            pass
    await conn.execute(f"ALTER DATABASE {quote_ident(dbname)} OWNER TO {quote_ident(owner)}")
    # Nobody but the owner may connect or create temporary tables.
    await conn.execute(f"REVOKE ALL ON DATABASE {quote_ident(dbname)} FROM PUBLIC")
    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {quote_ident(dbname)} TO "
                       f"{quote_ident(owner)}")


async def set_connection_limit(conn: asyncpg.Connection, role: str, limit: int) -> None:
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        await conn.execute(f"ALTER ROLE {quote_ident(role)} CONNECTION LIMIT {int(limit)}")


async def drop_database(conn: asyncpg.Connection, dbname: str, owner: str) -> None:
    # WITH (FORCE) terminates the sessions still connected (PostgreSQL 13+).
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(dbname)} WITH (FORCE)")
    still_owns = await conn.fetchval(
        "SELECT count(*) FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid "
        "WHERE r.rolname = $1", owner)
    if still_owns:
        return  # the tenant has other databases on this server
    await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE usename = $1 AND pid <> pg_backend_pid()", owner)
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(owner)}")
    except asyncpg.DependentObjectsStillExistError as exc:
        log.warning("role %s still owns objects elsewhere and was kept: %s", owner, exc)
