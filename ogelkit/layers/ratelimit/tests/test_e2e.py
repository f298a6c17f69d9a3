"""Ratelimit through the real Postgres front door with real clients: in a gateway thread, and
as two ``ogelkit run`` processes sharing one Redis bucket (±5 % over 10 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
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

PLUGINS = "postgres,ratelimit"
LAYER = '[[layers]]\ntype = "ratelimit"\n'


@pytest.fixture(autouse=True)
def _only_these_plugins(monkeypatch):
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", PLUGINS)


async def _burst(kw: dict, n: int) -> tuple[list[bool], list[asyncpg.PostgresError]]:
    conn = await asyncpg.connect(**kw, ssl=False)
    outcomes, errors = [], []
    try:
        for _ in range(n):
            try:
                assert await conn.fetchval("SELECT 1") == 1
                outcomes.append(True)
            except asyncpg.PostgresError as exc:
                outcomes.append(False)
                errors.append(exc)
        assert outcomes.count(False) == 0 or await _eventually_ok(conn)
    finally:
        await conn.close()
    return outcomes, errors


async def _eventually_ok(conn) -> bool:
    """The connection stays usable after refusals: once the bucket refills, queries pass."""
    await asyncio.sleep(0.25)
    return await conn.fetchval("SELECT 42") == 42


def test_burst_of_100_from_a_free_tenant_sees_20_pass_and_the_rest_limited():
    t = Tenant(unique("rl"), tier="free")
    with pg_gateway([t], extra=LAYER) as gw:
        outcomes, errors = asyncio.run(_burst(gw.asyncpg_kw(t), 100))
        passed = outcomes.count(True)
        assert 20 <= passed <= 21, outcomes
        assert outcomes[:20] == [True] * 20  # the burst passes at once
        err = errors[0]
        assert err.sqlstate == "53400"
        assert err.message == f'rate limit exceeded for tenant "{t.slug}"'
        assert err.detail == "limit 10 operations per second with bursts of 20 on tier free."
        assert err.hint.startswith("Retry after ") and err.hint.endswith(
            " ms. Upgrade to starter for 50 operations per second.")
        retry_ms = int(err.hint.split()[2])
        assert 1 <= retry_ms <= 100
        # psycopg (and therefore psql's libpq) see the same SQLSTATE on the same connection
        with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                for _ in range(30):
                    conn.execute("SELECT 1")
            assert info.value.sqlstate == "53400"
            time.sleep(0.25)
            assert conn.execute("SELECT 7").fetchone() == (7,)
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="ratelimit",
                       decision="rejected", reason="rate", tier="free") >= 79


def test_the_tenant_bucket_spans_its_databases_and_connections():
    t = Tenant(unique("rls"), tier="free", databases=("main", "second"))
    with pg_gateway([t], extra=LAYER) as gw:
        async def go():
            conns = [await asyncpg.connect(**gw.asyncpg_kw(t, db), ssl=False)
                     for db in ("main", "second", "main")]
            ok = 0
            try:
                for i in range(60):
                    try:
                        await conns[i % 3].fetchval("SELECT 1")
                        ok += 1
                    except asyncpg.PostgresError as exc:
                        assert exc.sqlstate == "53400"
            finally:
                for c in conns:
                    await c.close()
            return ok
        assert 20 <= asyncio.run(go()) <= 21


def test_delay_mode_holds_queries_back_instead_of_refusing():
    t = Tenant(unique("rld"), tier="free")
    with pg_gateway([t], extra=LAYER + 'mode = "delay"\nmax_delay = "2s"\n') as gw:
        async def go():
            conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
            try:
                started = time.monotonic()
                for _ in range(30):
                    assert await conn.fetchval("SELECT 1") == 1
                return time.monotonic() - started
            finally:
                await conn.close()
        elapsed = asyncio.run(go())
        assert 0.85 <= elapsed < 1.6  # 20 at once, then one per 100 ms
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="ratelimit",
                       decision="delayed", reason="rate", tier="free") >= 9


def test_redis_stopped_mid_run_fails_open_to_the_local_bucket(caplog):
    t = Tenant(unique("rlr"), tier="free")
    with PrivateRedis() as server:
        extra = f'[state]\nurl = "{server.url}"\n' + LAYER + 'state_retry = "300ms"\n'
        with pg_gateway([t], extra=extra) as gw, \
                psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            for _ in range(5):
                conn.execute("SELECT 1")
            server.stop()
            ok = 0
            for _ in range(30):
                try:
                    conn.execute("SELECT 1")
                    ok += 1
                except psycopg.Error as exc:
                    assert exc.sqlstate == "53400"  # the local bucket still limits
            assert ok == 20
            assert gw.running.metric("ogelkit_state_unavailable_total", layer="ratelimit",
                           policy="open") == 30
            outage = [r for r in caplog.records if "shared state unavailable" in r.getMessage()]
            assert len(outage) == 1
            server.start()
            time.sleep(1.2)  # the local bucket refills meanwhile; Redis is tried again
            conn.execute("SELECT 1")
            assert any("available again" in r.getMessage() for r in caplog.records)


def test_redis_stopped_fails_closed_when_configured():
    t = Tenant(unique("rlc"), tier="free")
    with PrivateRedis() as server:
        extra = f'[state]\nurl = "{server.url}"\n' + LAYER + 'state_down = "closed"\n'
        with pg_gateway([t], extra=extra) as gw, \
                psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            conn.execute("SELECT 1")
            server.stop()
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT 1")
            assert info.value.sqlstate == "08006"


# -- two gateway processes sharing one bucket in Redis -----------------------------------------

def _config(port: int, control_url: str, tenant: Tenant, prefix: str, rate: int, burst: int) -> str:
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
url = "{redis_url()}"

[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "o7st_"

[tiers.free]
ops_per_second = {rate}
burst = {burst}

[[layers]]
type = "ratelimit"
key_prefix = "{prefix}"

[tenants.{tenant.slug}]
tier = "{tenant.tier}"
password = "{tenant.password}"
[tenants.{tenant.slug}.databases.main]
backend = "pg"
"""


@contextlib.contextmanager
def two_gateways(tenant: Tenant, rate: int, burst: int) -> Iterator[tuple[int, int]]:
    prefix = f"o7s-test-rl-{uuid.uuid4().hex[:8]}:"
    with scratch_pg_database() as control_url:
        env = {"OGELKIT_LOAD_PLUGINS": PLUGINS}
        ports = [free_port(), free_port()]
        procs = [GatewayProcess(_config(p, control_url, tenant, prefix, rate, burst), env=env)
                 for p in ports]
        try:
            for proc in procs:  # one after the other: the first provisions the database
                proc.start(wait_ready=60)
            yield ports[0], ports[1]
        finally:
            for proc in procs:
                proc.kill()
            subprocess.run([sys.executable, "-m", "ogelkit", "tenants", "delete", tenant.slug, "--yes"],
                           env={**os.environ, **env, "OGELKIT_CONFIG": str(procs[0].config_path)},
                           capture_output=True, timeout=120)


def test_two_gateways_together_admit_the_configured_rate_within_5_percent():
    rate, burst, duration = 100, 10, 10.0
    t = Tenant(unique("rl2"), tier="free")
    with two_gateways(t, rate, burst) as ports:
        async def run() -> tuple[list[int], int]:
            admitted = [0, 0]
            offered = 0
            conns = [(i, await asyncpg.connect(host="127.0.0.1", port=port, user=t.slug,
                                               password=t.password, database="main", ssl=False))
                     for i, port in enumerate(ports) for _ in range(3)]
            await asyncio.sleep(burst / rate + 0.2)  # logins done; the bucket is full
            deadline = time.monotonic() + duration

            async def worker(i: int, conn) -> None:
                nonlocal offered
                while time.monotonic() < deadline:
                    offered += 1
                    try:
                        await conn.fetchval("SELECT 1")
                        admitted[i] += 1
                    except asyncpg.PostgresError as exc:
                        assert exc.sqlstate == "53400"
                    await asyncio.sleep(0.012)

            try:
                await asyncio.gather(*(worker(i, c) for i, c in conns))
            finally:
                for _, c in conns:
                    await c.close()
            return admitted, offered

        admitted, offered = asyncio.run(run())
    total = sum(admitted)
    expected = rate * duration + burst
    print(f"two gateways: admitted {admitted} = {total} of {offered} offered, "
          f"expected {expected:.0f} ({(total - expected) / (rate * duration):+.1%})")
    assert offered > 2 * expected, offered  # the load really was over the rate
    assert abs(total - expected) <= 0.05 * rate * duration, (admitted, offered)
    assert min(admitted) > 0.25 * total, admitted  # both gateways admitted their share
