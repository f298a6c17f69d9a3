"""Capabilities the layers use: cost estimates, session settings, storage, sleep/wake."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.backend import PostgresBackend
from ogelkit_postgres.sql import normalize, verb_of

from ogelkit import Capability, Operation
from ogelkit.testing import make_session
from ogelkit.testing.contracts import BackendContract
from ogelkit.testing.services import pg_dsn


class TestPostgresBackendContract(BackendContract):
    backend_class = PostgresBackend
    # A prefix of its own: the suite provisions fixed names ("contract-t"/"maindb").
    options = {"dsn": pg_dsn(), "name_prefix": f"o7sc{secrets.token_hex(3)}_"}


def test_capabilities_are_declared():
    assert PostgresBackend.capabilities == {
        Capability.ESTIMATE_COST, Capability.SESSION_SETTINGS, Capability.STORAGE_BYTES,
        Capability.SLEEP, Capability.WAKE, Capability.CONSOLE}


def _session(gw, t, tier: str = "pro"):
    session = make_session(gw.context, tenant=t.slug, tier=tier, protocol="postgres")
    session.db = gw.call(gw.context.store.get_database(t.slug, "main"))
    session.backend = gw.backend()
    return session


def test_session_settings_per_tier(tx_gw):
    t = tx_gw.tenants[0]
    backend = tx_gw.backend()
    free = backend.session_settings(_session(tx_gw, t, "free"))
    assert free == {"work_mem": "16384kB", "statement_timeout": "10000ms",
                    "idle_in_transaction_session_timeout": "30000ms",
                    "max_parallel_workers_per_gather": "2"}
    ent = backend.session_settings(_session(tx_gw, t, "enterprise"))
    assert ent["work_mem"] == "524288kB" and ent["statement_timeout"] == "120000ms"
    # One shared dict per (tier, tenant): the pool's "already applied?" test is identity.
    assert backend.session_settings(_session(tx_gw, t, "free")) is free


def test_cost_key_normalises_literals(tx_gw):
    t = tx_gw.tenants[0]
    session = _session(tx_gw, t)
    backend = tx_gw.backend()
    a = Operation(session, "query", "SELECT", "SELECT * FROM x WHERE id = 42 AND n = 'bob'")
    b = Operation(session, "query", "SELECT", "select  * FROM x WHERE id = 7 AND n = 'al''ice'")
    assert backend.cost_key(a) == (t.slug, "main", "SELECT * FROM x WHERE id = ? AND n = ?")
    assert backend.cost_key(b)[2] == "select * FROM x WHERE id = ? AND n = ?"
    assert backend.cost_key(Operation(session, "query", "CREATE", "CREATE TABLE y (a int)")) \
        is None
    assert normalize("SELECT $1, 1.5e3, x1 FROM t WHERE a IN (1, 2, 3) -- c") == \
        "SELECT $1, ?, x1 FROM t WHERE a IN (?)"
    assert verb_of("/* c */ ( select 1)") == "SELECT"
    assert verb_of("vacuum") == "VACUUM" and verb_of("frobnicate") == "OTHER"


def test_a_huge_statement_is_keyed_by_its_exact_text(tx_gw):
    from ogelkit_postgres.backend import NORMALIZE_MAX
    session = _session(tx_gw, tx_gw.tenants[0])
    backend = tx_gw.backend()

    def key(text: str):
        return backend.cost_key(Operation(session, "query", "SELECT", text))
    pad = "1," * (NORMALIZE_MAX // 2)
    a, b = f"SELECT {pad} 'a'", f"SELECT {pad} 'b'"
    assert key(a) == key("".join(list(a))) != key(b)  # equal text (another object): one key
    assert "#" in key(a) and "?" in key("SELECT 'a'")[2]  # short ones are still normalised


def test_estimate_cost_uses_explain_with_the_tenants_role(tx_gw):
    t = tx_gw.tenants[0]
    with psycopg.connect(tx_gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS big; CREATE TABLE big AS "
                     "SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g; "
                     "ANALYZE big")
    session = _session(tx_gw, t)
    backend = tx_gw.backend()

    def cost(text: str, verb: str = "SELECT") -> float | None:
        return tx_gw.call(backend.estimate_cost(Operation(session, "query", verb, text)))

    scan = cost("SELECT * FROM big WHERE v LIKE '%ab%'")
    assert scan is not None and scan > 100
    cheap = cost("SELECT 1")
    assert cheap is not None and cheap < scan
    # Parameters ($1) get a generic plan instead of failing.
    param = cost("SELECT * FROM big WHERE id > $1")
    assert param is not None and param > 1
    # Never more than one statement, never executed.
    assert cost("SELECT 1; DROP TABLE big") is None
    assert cost("DELETE FROM big", "DELETE") is not None
    assert cost("DROP TABLE big", "DROP") is None
    assert cost("SELECT * FROM no_such_table") is None
    with psycopg.connect(tx_gw.conninfo(t, sslmode="disable")) as conn:
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (20000,)


def test_storage_bytes(tx_gw):
    t = tx_gw.tenants[0]
    size = tx_gw.call(tx_gw.backend().storage_bytes(_session(tx_gw, t).db))
    assert size is not None and size > 5 * 1024 * 1024


def test_sleep_closes_pooled_connections_and_wake_reopens_them(tx_gw):
    t = tx_gw.tenants[1]
    db = _session(tx_gw, t).db
    backend = tx_gw.backend()
    with psycopg.connect(tx_gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        conn.execute("SELECT 1")
        pool = tx_gw.pool(t)
        assert pool.idle
        tx_gw.call(backend.sleep(db))
        assert not pool.idle

        async def upstream() -> int:
            admin = await asyncpg.connect(pg_dsn())
            try:
                await asyncio.sleep(0.2)
                return await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                    db.upstream["role"])
            finally:
                await admin.close()
        assert asyncio.run(upstream()) == 0
        # A client of a sleeping database is served, and wakes it: connections are pooled
        # again instead of being closed after each transaction.
        assert conn.execute("SELECT 'awake'").fetchone() == ("awake",)
        assert not pool.asleep and len(pool.idle) == 1
    tx_gw.call(backend.sleep(db))
    tx_gw.call(backend.wake(db))
    assert len(pool.idle) >= 1


@pytest.mark.parametrize("verb", ["SELECT", "WITH", "INSERT"])
def test_cost_key_none_without_text(tx_gw, verb):
    session = _session(tx_gw, tx_gw.tenants[0])
    assert tx_gw.backend().cost_key(Operation(session, "query", verb, None)) is None
