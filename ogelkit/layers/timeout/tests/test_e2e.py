"""Timeout layer through the real Postgres front door: the gateway's own deadline cancels the
statement upstream (no upstream statement_timeout is set here: only this layer runs), the
client gets 57014 with a tier hint, and the server connection is reused afterwards."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway, unique

from ogelkit.testing.services import pg_dsn

PLUGINS = "postgres,timeout"
LAYER = '[[layers]]\ntype = "timeout"\n'
FAST = LAYER + '[tiers.starter]\nstatement_timeout = "1s"\n'


@pytest.fixture(autouse=True)
def _only_these_plugins(monkeypatch):
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", PLUGINS)


def _sleeping_upstream(gw: PgGateway, t: Tenant) -> int:
    """pg_sleep statements of this tenant still running on the upstream server."""
    role = gw.call(gw.backend().upstream_target(gw.pool(t).db))[2]
    with psycopg.connect(pg_dsn(), autocommit=True) as admin:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active' "
            "AND query LIKE '%%pg_sleep%%'", (role,)).fetchone()[0]


def test_pg_sleep_15_on_free_gets_57014_after_10_seconds():
    t = Tenant(unique("to"), tier="free")
    with pg_gateway([t], extra=LAYER) as gw:
        async def with_psycopg():
            async with await psycopg.AsyncConnection.connect(gw.conninfo(t),
                                                             autocommit=True) as conn:
                started = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled) as info:
                    await conn.execute("SELECT pg_sleep(15)")
                elapsed = time.monotonic() - started
                # the same client connection carries on
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
                return info.value, elapsed

        async def with_asyncpg():  # extended protocol (Parse/Bind/Execute)
            conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
            try:
                started = time.monotonic()
                with pytest.raises(asyncpg.QueryCanceledError) as info:
                    await conn.fetchval("SELECT pg_sleep(15)")
                elapsed = time.monotonic() - started
                assert await conn.fetchval("SELECT 1") == 1
                return info.value, elapsed
            finally:
                await conn.close()

        async def both():
            return await asyncio.gather(with_psycopg(), with_asyncpg())

        (err, elapsed), (aerr, aelapsed) = asyncio.run(both())
        assert 9.9 <= elapsed < 11.5 and 9.9 <= aelapsed < 11.5, (elapsed, aelapsed)
        assert err.sqlstate == "57014" and aerr.sqlstate == "57014"
        diag = err.diag
        assert diag.message_primary == ("canceling statement due to the gateway's statement "
                                        "timeout (10s)")
        assert diag.message_detail == "statement timeout 10s on tier free."
        assert diag.message_hint == "Upgrade to starter for a 30s statement timeout."
        assert _sleeping_upstream(gw, t) == 0  # cancelled upstream, not just answered
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="timeout", decision="rejected",
                       reason="timeout", tier="free") == 2


def test_psql_timeout_and_the_pooled_server_connection_is_reused():
    t = Tenant(unique("top"), tier="starter")
    with pg_gateway([t], extra=FAST, backend_options="pool_size = 1") as gw:
        out = gw.psql(t, "-c", "SELECT pg_sleep(5)")
        assert out.returncode != 0
        assert "ERROR:  canceling statement due to the gateway's statement timeout (1s)" in out.stderr
        assert "HINT:  Upgrade to pro for a 1min statement timeout." in out.stderr
        # One server connection only: if the cancel had leaked or poisoned it, these would hang
        # or fail. Several clients in turn, each with a timeout of its own in between.
        for i in range(3):
            with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(3)")
                assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        stats = gw.pool(t).stats()
        assert stats["size"] == 1 and stats["active"] == 0, stats
        assert _sleeping_upstream(gw, t) == 0


def test_timeout_inside_a_transaction_aborts_it_like_postgres_does():
    t = Tenant(unique("tot"), tier="starter")
    with pg_gateway([t], extra=FAST) as gw, \
            psycopg.connect(gw.conninfo(t)) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS scratch (x int)")
        conn.commit()
        conn.execute("INSERT INTO scratch VALUES (1)")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(4)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.rollback()


def test_statements_finishing_in_time_are_untouched():
    t = Tenant(unique("tok"), tier="starter")
    with pg_gateway([t], extra=FAST) as gw, \
            psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
        for _ in range(200):
            conn.execute("SELECT 1")
        assert conn.execute("SELECT pg_sleep(0.5)").fetchone() == ("",)
        layer = next(x for x in gw.context.layers if x.type_name == "timeout")
        assert layer.describe()["running"] == 0 and layer.describe()["expired"] == 0
