"""Provisioning: a role per tenant, a database per tenant database, CONNECT revoked from
PUBLIC, the tier's connection limit on the role; idempotent create/delete; isolation."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.backend import parse_dsn
from ogelkit_postgres.testing import PREFIX, Tenant, gateway_config, pg_gateway, unique

from ogelkit.testing.services import pg_dsn

A = Tenant(unique("pgia"), tier="pro")
B = Tenant(unique("pgib"), tier="free")


@pytest.fixture(scope="module")
def gw():
    with pg_gateway([A, B]) as gw:
        yield gw


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(pg_dsn())


def upstream(gw, t: Tenant, name: str = "main") -> dict:
    return gw.call(gw.context.store.get_database(t.slug, name)).upstream


def test_upstream_objects_and_limits(gw):
    async def go():
        admin = await _admin()
        try:
            for t, limit in ((A, 50 + 2), (B, 5 + 2)):
                up = upstream(gw, t)
                row = await admin.fetchrow(
                    "SELECT r.rolconnlimit, r.rolsuper, r.rolcreatedb, r.rolcreaterole, "
                    "d.datacl::text[] AS acl, pg_get_userbyid(d.datdba) AS owner "
                    "FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $2",
                    up["role"], up["dbname"])
                assert row["rolconnlimit"] == limit  # tier connections + reserve
                assert not (row["rolsuper"] or row["rolcreatedb"] or row["rolcreaterole"])
                assert row["owner"] == up["role"]
                # No ACL entry for PUBLIC ("=..."): nobody else may CONNECT.
                assert row["acl"] and not any(e.startswith("=") for e in row["acl"])
                # Only the verifier reached the server, never the password.
                secret = await admin.fetchval(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1", up["role"])
                assert secret.startswith("SCRAM-SHA-256$") and up["password"] not in secret
        finally:
            await admin.close()
    asyncio.run(go())


def test_tenant_b_cannot_reach_tenant_a(gw):
    a_up, b_up = upstream(gw, A), upstream(gw, B)
    pg = parse_dsn(pg_dsn())

    async def direct(up: dict, dbname: str) -> asyncpg.Connection:
        return await asyncpg.connect(host=pg["host"], port=pg["port"], user=up["role"],
                                     password=up["password"], database=dbname)

    async def go():
        # A writes a secret through the gateway.
        conn = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        await conn.execute("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('a-only')")
        await conn.close()
        # Directly upstream, B's role cannot even connect to A's database.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await direct(b_up, a_up["dbname"])
        own = await direct(b_up, b_up["dbname"])
        assert await own.fetchval("SELECT to_regclass('secrets')") is None
        await own.close()
        # Through the gateway: B's "main" is B's own database ...
        conn = await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False)
        assert await conn.fetchval("SELECT current_database()") == b_up["dbname"]
        assert await conn.fetchval("SELECT to_regclass('secrets')") is None
        await conn.close()
        # ... A's upstream name is no database of B's ...
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(**gw.asyncpg_kw(B, database=a_up["dbname"]), ssl=False)
        # ... and B's password opens neither A's name, nor A's tenant claimed via options.
        for kw in ({"user": A.slug}, {"user": f"x.{A.slug}"},
                   {"server_settings": {"options": f"-c tenant={A.slug}"}}):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(**{**gw.asyncpg_kw(B), **kw}, ssl=False)
    asyncio.run(go())


def test_other_tenants_are_not_named_in_the_shared_catalogs(gw):
    """Issue 16, defect 11: pg_database, pg_roles and pg_stat_activity of the shared server
    are readable by every role; provisioned names say nothing about the tenant."""
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        other = await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False)  # B is connected too
        try:
            seen = [r[0] for r in await conn.fetch(
                "SELECT datname::text FROM pg_database UNION ALL "
                "SELECT rolname::text FROM pg_roles UNION ALL "
                "SELECT concat_ws(' ', usename, datname, application_name) "
                "FROM pg_stat_activity")]
            assert upstream(gw, B)["role"] in seen  # B's role is listed, under its opaque name
        finally:
            await other.close()
            await conn.close()
        for text in seen:
            for t in (A, B):
                assert t.slug.replace("-", "_") not in text and t.slug not in text, text
    asyncio.run(go())


def test_readable_names_on_request():
    from ogelkit_postgres import provision as prov
    assert prov.role_name("o7s_", "acme") == "o7s_acme"
    one = prov.opaque_role_name("o7s_", "key-1", "acme")
    assert one == prov.opaque_role_name("o7s_", "key-1", "acme")  # stable for the tenant
    assert one != prov.opaque_role_name("o7s_", "key-2", "acme")  # keyed
    assert prov.opaque_database_name("o7s_", "key-1", "acme", "main") != \
        prov.opaque_database_name("o7s_", "key-1", "acme", "other")


def test_provision_is_idempotent_and_finishes_a_half_done_job(gw):
    backend = gw.backend()
    t = gw.call(gw.context.store.get_tenant(A.slug))
    tier = gw.context.tiers["pro"]
    role, dbname = backend.names(A.slug, "half")

    async def half_done():
        admin = await _admin()
        try:  # a run that died after creating the database, before revoking PUBLIC
            await admin.execute(f'CREATE DATABASE "{dbname}" TEMPLATE template0')
        finally:
            await admin.close()
    asyncio.run(half_done())
    try:
        first = gw.call(backend.provision(t, "half", tier))
        second = gw.call(backend.provision(t, "half", tier))
        # The tenant's role keeps the password its other database already uses.
        assert first["password"] == second["password"] == upstream(gw, A)["password"]

        async def check():
            admin = await _admin()
            try:
                row = await admin.fetchrow(
                    "SELECT pg_get_userbyid(datdba) AS owner, datacl::text[] AS acl "
                    "FROM pg_database WHERE datname = $1", dbname)
                assert row["owner"] == role
                assert not any(e.startswith("=") for e in row["acl"])
            finally:
                await admin.close()
        asyncio.run(check())
    finally:
        from ogelkit import DatabaseRecord
        record = DatabaseRecord(A.slug, "half", "postgres", "pg", {"role": role, "dbname": dbname})
        gw.call(backend.deprovision(t, record))
        gw.call(backend.deprovision(t, record))  # idempotent
    # A's other database survived, and so did the role it shares.
    with psycopg.connect(gw.conninfo(A, sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_deprovision_terminates_live_sessions(gw):
    t = Tenant(unique("pgid"))
    with pg_gateway([t]) as other:
        conn = psycopg.connect(other.conninfo(t, sslmode="disable"), autocommit=True)
        try:
            conn.execute("SELECT 1")
            tenant = other.call(other.context.store.get_tenant(t.slug))
            record = other.call(other.context.store.get_database(t.slug, "main"))
            other.call(other.backend().deprovision(tenant, record))
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            conn.close()

        async def gone():
            admin = await _admin()
            try:
                return (await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                             record.upstream["dbname"]),
                        await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                             record.upstream["role"]))
            finally:
                await admin.close()
        assert asyncio.run(gone()) == (0, 0)


def _cli(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ogelkit", "-c", config, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ})


def test_cli_databases_create_and_delete(tmp_path):
    slug = unique("pgcli")
    control = f"sqlite:///{tmp_path}/control.db"
    config = tmp_path / "config.toml"
    config.write_text(gateway_config([], control_url=control))
    made = _cli(str(config), "tenants", "create", slug, "--tier", "starter")
    assert made.returncode == 0, made.stderr
    password = re.search(r"password: (\S+)", made.stdout).group(1)
    created = _cli(str(config), "databases", "create", slug, "main", "--kind", "postgres")
    assert created.returncode == 0, created.stderr
    assert re.search(rf"postgresql://{slug}:<password>@localhost:\d+/main", created.stdout)
    again = _cli(str(config), "databases", "create", slug, "main", "--kind", "postgres")
    assert again.returncode == 0, again.stderr  # idempotent
    try:
        # A gateway on the same control plane serves the new database.
        with pg_gateway([], control_url=control, cleanup=False) as gw:
            out = gw.psql(Tenant(slug), "-c", "SELECT current_user", password=password)
            assert out.returncode == 0, out.stderr
            role = out.stdout.strip()  # opaque: the prefix and an HMAC, not the slug
            assert re.fullmatch(rf"{PREFIX}r[0-9a-f]{{20}}", role), role
    finally:
        deleted = _cli(str(config), "databases", "delete", slug, "main", "--yes")
        assert deleted.returncode == 0, deleted.stderr

    async def gone():
        admin = await _admin()
        try:
            return await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
        finally:
            await admin.close()
    assert asyncio.run(gone()) == 0
    missing = _cli(str(config), "databases", "delete", slug, "main", "--yes")
    assert missing.returncode != 0 and "no database" in missing.stderr
