"""Gatekeeper through the real Postgres front door with real clients (psql, psycopg, asyncpg):
in a gateway thread, and as two ``ogelkit run`` processes sharing one Redis and one
PostgreSQL control plane, one of them killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.testing import Tenant, pg_gateway, unique

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.redis_server import PrivateRedis, free_port
from ogelkit.testing.services import pg_dsn, redis_url, scratch_pg_database

PLUGINS = "postgres,gatekeeper"
LAYER = '[[layers]]\ntype = "gatekeeper"\n'


@pytest.fixture(autouse=True)
def _only_these_plugins(monkeypatch):
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", PLUGINS)


def _connect_error(gw_port: int, tenant: Tenant, database: str = "main") -> asyncpg.PostgresError:
    async def go():
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=gw_port, user=tenant.slug,
                                         password=tenant.password, database=database, ssl=False)
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        raise AssertionError("connection was admitted")
    return asyncio.run(go())


def test_sixth_connection_of_a_free_tenant_gets_53300():
    t = Tenant(unique("gk"), tier="free")
    with pg_gateway([t], extra=LAYER) as gw:
        conns = [psycopg.connect(gw.conninfo(t), autocommit=True) for _ in range(5)]
        try:
            for c in conns:
                assert c.execute("SELECT 1").fetchone() == (1,)
            # asyncpg: the SQLSTATE and every field
            err = _connect_error(gw.port, t)
            assert isinstance(err, asyncpg.TooManyConnectionsError) and err.sqlstate == "53300"
            assert err.message == f'too many connections for tenant "{t.slug}"'
            assert err.detail == "5/5 connections in use on tier free."
            assert err.hint == "Upgrade to starter for 10 connections."
            # psql prints the same to the user
            out = gw.psql(t, "-c", "SELECT 1")
            assert out.returncode == 2
            assert "FATAL:  too many connections" in out.stderr
            assert "HINT:  Upgrade to starter for 10 connections." in out.stderr
            # the refused connections freed nothing: still full
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                psycopg.connect(gw.conninfo(t))
            conns.pop().close()
            with psycopg.connect(gw.conninfo(t), autocommit=True) as again:
                assert again.execute("SELECT 2").fetchone() == (2,)
        finally:
            for c in conns:
                c.close()
        # all closed: the whole cap is available again
        conns = [psycopg.connect(gw.conninfo(t), autocommit=True) for _ in range(5)]
        for c in conns:
            c.close()


def test_queued_client_connects_when_a_slot_frees_else_gets_53300():
    t = Tenant(unique("gkq"), tier="pro")
    extra = LAYER + '[tiers.pro]\nconnections = 2\nconnection_queue = "2s"\n'
    with pg_gateway([t], extra=extra) as gw:
        holders = [psycopg.connect(gw.conninfo(t), autocommit=True) for _ in range(2)]
        timer = threading.Timer(0.7, holders[0].close)
        timer.start()
        started = time.monotonic()
        with psycopg.connect(gw.conninfo(t), autocommit=True) as queued:
            waited = time.monotonic() - started
            assert queued.execute("SELECT 1").fetchone() == (1,)
            assert 0.6 <= waited < 1.8
            started = time.monotonic()
            err = _connect_error(gw.port, t)
            assert 1.9 <= time.monotonic() - started < 4
            assert err.sqlstate == "53300"
            assert err.detail == "2/2 connections in use on tier pro; waited 2s for a free slot."
        timer.join()
        holders[1].close()


def test_per_database_caps_each_database():
    t = Tenant(unique("gkd"), tier="free", databases=("main", "second"))
    extra = LAYER + "per_database = true\n"
    with pg_gateway([t], extra=extra) as gw:
        conns = [psycopg.connect(gw.conninfo(t, db), autocommit=True)
                 for db in ("main", "second") for _ in range(5)]
        try:
            err = _connect_error(gw.port, t, "second")
            assert err.sqlstate == "53300"
            assert err.message == f'too many connections for database "second" of tenant "{t.slug}"'
        finally:
            for c in conns:
                c.close()


def test_redis_stopped_mid_run_fails_open_logged_and_counted(caplog):
    t = Tenant(unique("gkr"), tier="free")
    with PrivateRedis() as server:
        extra = f'[state]\nurl = "{server.url}"\n' + LAYER + 'lease_ttl = "3s"\n'
        with pg_gateway([t], extra=extra) as gw:
            first = [psycopg.connect(gw.conninfo(t), autocommit=True) for _ in range(2)]
            server.stop()
            during = [psycopg.connect(gw.conninfo(t), autocommit=True) for _ in range(3)]
            try:
                for c in during:
                    assert c.execute("SELECT 1").fetchone() == (1,)
                # the cap still holds, counted by this replica alone
                assert _connect_error(gw.port, t).sqlstate == "53300"
                assert gw.running.metric("ogelkit_state_unavailable_total", layer="gatekeeper",
                               policy="open") == 4
                assert gw.running.metric("ogelkit_layer_decisions_total", layer="gatekeeper",
                               decision="allowed", reason="state_down", tier="free") == 3
            finally:
                for c in first + during:
                    c.close()
            outage = [r for r in caplog.records if "shared state unavailable" in r.getMessage()]
            assert len(outage) == 1


def test_redis_stopped_mid_run_fails_closed_when_configured():
    t = Tenant(unique("gkc"), tier="free")
    with PrivateRedis() as server:
        extra = f'[state]\nurl = "{server.url}"\n' + LAYER + 'state_down = "closed"\n'
        with pg_gateway([t], extra=extra) as gw, \
                psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            server.stop()
            err = _connect_error(gw.port, t)
            assert err.sqlstate == "08006"
            assert conn.execute("SELECT 1").fetchone() == (1,)  # open sessions carry on


# -- two gateway processes: one Redis, one PostgreSQL control plane ---------------------------

def _config(port: int, control_url: str, state_url: str, tenant: Tenant, prefix: str) -> str:
    return f"""[listen]
host = "127.0.0.1"
http = 0
postgres = {port}

[gateway]
drain_timeout = "2s"

[control]
url = "{control_url}"
secret_key = "{test_secret_key()}"

[state]
url = "{state_url}"

[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "o7st_"

[[layers]]
type = "gatekeeper"
lease_ttl = "2s"
key_prefix = "{prefix}"

[tenants.{tenant.slug}]
tier = "{tenant.tier}"
password = "{tenant.password}"
[tenants.{tenant.slug}.databases.main]
backend = "pg"
"""


@contextlib.contextmanager
def two_gateways(tenant: Tenant) -> Iterator[tuple[GatewayProcess, int, GatewayProcess, int]]:
    prefix = f"o7s-test-gk-{uuid.uuid4().hex[:8]}:"
    with scratch_pg_database() as control_url:
        env = {"OGELKIT_LOAD_PLUGINS": PLUGINS}
        port_a, port_b = free_port(), free_port()
        a = GatewayProcess(_config(port_a, control_url, redis_url(), tenant, prefix), env=env)
        b = GatewayProcess(_config(port_b, control_url, redis_url(), tenant, prefix), env=env)
        try:
            a.start(wait_ready=60)  # provisions the tenant's database
            b.start(wait_ready=60)  # finds it in the shared control plane
            yield a, port_a, b, port_b
        finally:
            a.kill()
            b.kill()
            subprocess.run([sys.executable, "-m", "ogelkit", "tenants", "delete", tenant.slug, "--yes"],
                           env={**os.environ, **env, "OGELKIT_CONFIG": str(b.config_path)},
                           capture_output=True, timeout=120)


def _conninfo(port: int, t: Tenant) -> str:
    return (f"host=127.0.0.1 port={port} user={t.slug} dbname=main password={t.password} "
            "sslmode=disable connect_timeout=10")


def test_two_gateways_share_the_cap_and_a_sigkilled_ones_slots_come_back():
    t = Tenant(unique("gk2"), tier="free")
    with two_gateways(t) as (a, port_a, _b, port_b):
        on_a = [psycopg.connect(_conninfo(port_a, t), autocommit=True) for _ in range(3)]
        on_b = [psycopg.connect(_conninfo(port_b, t), autocommit=True) for _ in range(2)]
        try:
            for port in (port_a, port_b):
                err = _connect_error(port, t)
                assert err.sqlstate == "53300"
                assert err.detail == "5/5 connections in use on tier free."
            # A slot freed on B is usable on A.
            on_b.pop().close()
            deadline = time.monotonic() + 5
            while True:
                try:
                    on_a.append(psycopg.connect(_conninfo(port_a, t), autocommit=True))
                    break
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            # A dies without a goodbye: its 4 leases stay until lease_ttl (2 s) runs out
            # (each counted from its replica's last refresh).
            a.proc.kill()
            a.proc.wait(10)
            killed = time.monotonic()
            assert _connect_error(port_b, t).sqlstate == "53300"
            while len(on_b) < 5:
                try:
                    on_b.append(psycopg.connect(_conninfo(port_b, t), autocommit=True))
                except psycopg.OperationalError:
                    assert time.monotonic() - killed < 2.0 + 1.0, "leases outlived lease_ttl"
                    time.sleep(0.1)
            assert all(c.execute("SELECT 1").fetchone() == (1,) for c in on_b)
            assert _connect_error(port_b, t).sqlstate == "53300"
        finally:
            for c in on_a + on_b:
                with contextlib.suppress(Exception):
                    c.close()
