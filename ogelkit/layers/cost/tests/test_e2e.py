"""Cost layer through the real Postgres front door: real EXPLAIN estimates by the Postgres
backend, real clients (psql, psycopg, asyncpg)."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway, unique

PLUGINS = "postgres,cost"
LAYER = '[[layers]]\ntype = "cost"\n'
SETUP = ("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 100000) g;"
         "CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 20) g;"
         "ANALYZE big; ANALYZE small")
# Planner cost ~32,000 (over free's 10,000, under pro's 200,000), yet it runs in ~0.1 s.
CROSS_JOIN = "SELECT count(*) FROM big a CROSS JOIN small b"


@pytest.fixture(autouse=True)
def _only_these_plugins(monkeypatch):
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", PLUGINS)


def _layer(gw: PgGateway):
    return next(layer for layer in gw.context.layers if layer.type_name == "cost")


def _setup(gw: PgGateway, t: Tenant) -> None:
    out = gw.psql(t, "-c", SETUP)
    assert out.returncode == 0, out.stderr


def test_cross_join_over_a_large_table_is_refused_on_free_and_runs_on_pro():
    free, pro = Tenant(unique("cf"), tier="free"), Tenant(unique("cp"), tier="pro")
    with pg_gateway([free, pro], extra=LAYER) as gw:
        for t in (free, pro):
            _setup(gw, t)
        # psql (simple protocol)
        out = gw.psql(free, "-c", CROSS_JOIN)
        assert out.returncode != 0
        m = re.search(r"ERROR:  estimated cost ([\d,]+) exceeds the cost ceiling of tier free",
                      out.stderr)
        assert m, out.stderr
        cost = int(m.group(1).replace(",", ""))
        assert 10_000 < cost < 50_000
        assert f"DETAIL:  estimated cost {m.group(1)}, ceiling 10,000 on tier free." in out.stderr
        assert "HINT:  Upgrade to starter (cost ceiling 50,000), or narrow the statement." \
            in out.stderr

        async def clients():
            # asyncpg (extended protocol): SQLSTATE and fields; the connection stays usable
            conn = await asyncpg.connect(**gw.asyncpg_kw(free), ssl=False)
            try:
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.fetchval(CROSS_JOIN)
                assert info.value.sqlstate == "54001"
                assert info.value.hint.startswith("Upgrade to starter")
                assert await conn.fetchval("SELECT count(*) FROM small") == 20
            finally:
                await conn.close()
            conn = await asyncpg.connect(**gw.asyncpg_kw(pro), ssl=False)
            try:
                assert await conn.fetchval(CROSS_JOIN) == 2_000_000
            finally:
                await conn.close()
        asyncio.run(clients())
        # psycopg, pro: runs
        with psycopg.connect(gw.conninfo(pro), autocommit=True) as conn:
            assert conn.execute(CROSS_JOIN).fetchone() == (2_000_000,)
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="cost", decision="rejected",
                       reason="cost", tier="free") == 2
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="cost", decision="allowed",
                       reason="ok", tier="pro") >= 2


def test_repeated_statements_are_explained_once_and_utility_statements_pass():
    t = Tenant(unique("cr"), tier="free")
    with pg_gateway([t], extra=LAYER) as gw:
        _setup(gw, t)
        layer = _layer(gw)
        before = layer.estimates
        with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            for i in range(1, 31):  # same statement, other literals: one cache key
                assert conn.execute(f"SELECT pad FROM big WHERE id = {i}").fetchone() is not None
            assert layer.estimates == before + 1
            with conn.transaction():
                conn.execute("SET LOCAL work_mem = '1MB'")
                conn.execute("SHOW work_mem")
            assert layer.estimates == before + 1  # BEGIN/SET/SHOW/COMMIT: never estimated
        # asyncpg's prepared statements with parameters share the cache of their text
        async def prepared():
            conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
            try:
                stmt = await conn.prepare("SELECT pad FROM big WHERE id = $1")
                for i in range(20):
                    assert await stmt.fetchval(i + 1) is not None
            finally:
                await conn.close()
        asyncio.run(prepared())
        assert layer.estimates == before + 2
        assert layer.describe()["hits"] >= 48


def test_warn_mode_runs_the_statement_and_counts_it():
    t = Tenant(unique("cw"), tier="free")
    with pg_gateway([t], extra=LAYER + 'mode = "warn"\n') as gw:
        _setup(gw, t)
        with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
            assert conn.execute(CROSS_JOIN).fetchone() == (2_000_000,)
        assert gw.running.metric("ogelkit_layer_decisions_total", layer="cost", decision="warned",
                       reason="cost", tier="free") == 1
