"""Pooling: transaction mode with prepared statements, settings at checkout, layer verdicts
answered in the protocol, the canceller, waiting for a server, resets between clients."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import asyncpg
import psycopg
import pytest
from ogelkit_postgres.connection import PostgresConnection
from ogelkit_postgres.testing import Tenant, pg_gateway, unique

import ogelkit
from ogelkit import Reason, Reject
from ogelkit.testing import isolated_plugins


class ProbeLayer(ogelkit.Layer):
    """Test layer: refuses, delays and cancels operations on markers in their text, and
    records what the front door reports about every completed operation."""

    type_name = "pgprobe"
    completed: list[tuple] = []

    def on_operation(self, op):
        text = op.text or ""
        if "reject_me" in text:
            raise Reject(Reason.COST, "estimated cost 1234 is above the ceiling",
                         detail="cost 1234 > ceiling 1000 (tier pro)",
                         hint="Upgrade to enterprise for no ceiling.")
        if "slow_admit" in text:
            return asyncio.sleep(0.05)
        if "slow_reject" in text:
            async def later():
                await asyncio.sleep(0.02)
                raise Reject(Reason.RATE, "rate limit", retry_after=0.25)
            return later()
        if "cancel_me" in text:
            asyncio.get_running_loop().call_later(
                0.3, op.cancel, Reject(Reason.TIMEOUT, "statement timeout of 0.3 s reached",
                                       detail="the gateway cancelled it (tier pro)",
                                       hint="Upgrade to enterprise for 120 s."))
        return None

    def on_complete(self, op):
        self.completed.append((op.text, op.name, op.rows, op.written, op.error,
                               op.rejection.reason if op.rejection else None, op.bytes_out))


class _ProbePlugin:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(ProbeLayer)


LAYERS = '[[layers]]\ntype = "session"\n\n[[layers]]\ntype = "pgprobe"\n'
T = Tenant(unique("pgpo"), tier="pro")
MOVER = Tenant(unique("pgpm"), tier="free")  # changes tier in one test


@pytest.fixture(scope="module")
def gw():
    # (ogelkit.plugins cannot be imported by name here: pytest's importlib mode names this
    # file ogelkit.plugins.postgres.tests..., which shadows it.)
    plugins = isolated_plugins(("pgprobe", _ProbePlugin()), entry_points=True)
    with pg_gateway([T, MOVER], backend_options="pool_size = 10", extra=LAYERS,
                    plugins=plugins) as gw:
        yield gw


TINY = Tenant(unique("pgpt"), tier="pro")


@pytest.fixture(scope="module")
def tiny():
    with pg_gateway([TINY], backend_options='pool_size = 1\nquery_wait_timeout = "0.5s"\n'
                                            'max_prepared_statements = 3',
                    extra='[[layers]]\ntype = "session"\n') as gw:
        yield gw


def _upstream_count(gw, t) -> int:
    async def go():
        conn = await asyncpg.connect(gw.backend().config.dsn)
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND "
                "application_name <> 'o7s:explain'", gw.backend().names(t.slug, "main")[0])
        finally:
            await conn.close()
    return asyncio.run(go())


def test_200_clients_share_10_server_connections_with_prepared_statements(gw):
    async def client(i: int, ready: asyncio.Barrier) -> int:
        # asyncpg's statement cache uses named protocol-level prepared statements.
        conn = await asyncpg.connect(**gw.asyncpg_kw(T), ssl=False)
        try:
            await ready.wait()
            stmt = await conn.prepare("SELECT $1::int * $2::int")
            total = 0
            for j in range(5):
                total += await stmt.fetchval(i, j)
                total += await conn.fetchval("SELECT $1::int + 1", j)  # cached statement
                async with conn.transaction():
                    total += await conn.fetchval("SELECT $1::int", i)
            return total
        finally:
            await conn.close()

    async def go():
        ready = asyncio.Barrier(200)
        results = await asyncio.gather(*(client(i, ready) for i in range(200)))
        assert results == [i * 10 + 15 + 5 * i for i in range(200)]

    asyncio.run(go())
    pool = gw.pool(T)
    assert pool.limit == 10
    assert len(pool.members) <= 10
    assert _upstream_count(gw, T) <= 10
    # Every server connection prepared the shared statements at most a few times each.
    for srv in pool.members:
        assert len(srv.prepared) <= gw.backend().config.max_prepared_statements


def test_psycopg_prepared_statements_in_transaction_mode(gw):
    conns = [psycopg.connect(gw.conninfo(T, sslmode="disable"), autocommit=True,
                             prepare_threshold=0) for _ in range(12)]
    try:
        for round_ in range(5):
            for i, conn in enumerate(conns):
                assert conn.execute("SELECT %s::int + %s::int", (i, round_)).fetchone() == \
                    (i + round_,)
    finally:
        for conn in conns:
            conn.close()


def test_tier_settings_applied_and_common_path_sends_no_set(gw, monkeypatch):
    sent = []
    original = PostgresConnection._send_settings

    def counting(self, srv, desired):
        sent.append(dict(desired))
        return original(self, srv, desired)

    with psycopg.connect(gw.conninfo(T, sslmode="disable"), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('work_mem'), current_setting("
                           "'statement_timeout'), current_setting('application_name'), "
                           "current_setting('max_parallel_workers_per_gather'), "
                           "current_setting('idle_in_transaction_session_timeout')").fetchone()
        assert row == ("256MB", "1min", "", "8", "2min")
        # Warm every pooled connection, then count SETs on the common path.
        others = [psycopg.connect(gw.conninfo(T, sslmode="disable"), autocommit=True)
                  for _ in range(5)]
        try:
            monkeypatch.setattr(PostgresConnection, "_send_settings", counting)
            for _ in range(20):
                for c in [conn, *others]:
                    assert c.execute("SHOW work_mem").fetchone() == ("256MB",)
        finally:
            for c in others:
                c.close()
    assert sent == []


def test_layer_refusals_are_answered_in_the_protocol(gw):
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(T), ssl=False)
        try:
            # extended protocol (Parse/Bind/Execute with parameters)
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetchval("SELECT $1::text AS reject_me", "x")
            err = info.value
            assert err.sqlstate == "54001"
            assert err.detail == "cost 1234 > ceiling 1000 (tier pro)"
            assert err.hint == "Upgrade to enterprise for no ceiling."
            assert await conn.fetchval("SELECT $1::int", 5) == 5
            # simple protocol
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute("SELECT 'reject_me'")
            assert info.value.sqlstate == "54001"
            # refused after an asynchronous wait
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute("SELECT 'slow_reject'")
            assert info.value.sqlstate == "53400"
            assert info.value.hint == "Retry after 250 ms."
            # admitted after an asynchronous wait
            assert await conn.fetchval("SELECT 'slow_admit'") == "slow_admit"
            # refusal inside a transaction leaves the transaction usable
            async with conn.transaction():
                with pytest.raises(asyncpg.PostgresError):
                    await conn.execute("SELECT 'reject_me'")
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    asyncio.run(go())
    with psycopg.connect(gw.conninfo(T, sslmode="disable"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info, conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT %s::text AS reject_me", ("y",))
        assert info.value.sqlstate == "54001"
        assert conn.execute("SELECT 'pipeline after refusal'").fetchone() == \
            ("pipeline after refusal",)


def test_operations_are_reported_with_rows_and_bytes(gw):
    ProbeLayer.completed.clear()
    with psycopg.connect(gw.conninfo(T, sslmode="disable"), autocommit=True) as conn:
        conn.execute("SELECT g FROM generate_series(1, 37) g /* rows37 */")
        conn.execute("DROP TABLE IF EXISTS w; CREATE TABLE w (a int) /* ddl */")
        conn.execute("INSERT INTO w SELECT generate_series(1, 12) /* write12 */")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0 /* boom */")
    done = {c[0]: c for c in ProbeLayer.completed if c[0]}
    rows37 = done["SELECT g FROM generate_series(1, 37) g /* rows37 */"]
    assert rows37[1:5] == ("SELECT", 37, None, None) and rows37[6] > 37 * 5
    assert done["INSERT INTO w SELECT generate_series(1, 12) /* write12 */"][1:5] == \
        ("INSERT", None, 12, None)
    assert done["SELECT 1 / 0 /* boom */"][4] == "22012"


def test_canceller_answers_with_the_layers_reject_and_keeps_the_server(gw):
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(T), ssl=False)
        try:
            started = time.monotonic()
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetchval("SELECT pg_sleep(10), 'cancel_me'")
            assert time.monotonic() - started < 3
            err = info.value
            assert err.sqlstate == "57014"
            assert err.args[0] == "statement timeout of 0.3 s reached"
            assert err.detail == "the gateway cancelled it (tier pro)"
            assert err.hint == "Upgrade to enterprise for 120 s."
            assert await conn.fetchval("SELECT 'reusable'") == "reusable"
        finally:
            await conn.close()
    asyncio.run(go())


def test_client_set_lasts_one_transaction_and_never_leaks(tiny):
    """Transaction mode: a session-level SET holds for the transaction it ran in (the
    server connection is the client's only until then); the next checkout restores the
    tier's settings, so it never reaches another client. Reported parameters (TimeZone,
    DateStyle ...) are the exception: they follow the client (see test_relay)."""
    with psycopg.connect(tiny.conninfo(TINY, sslmode="disable")) as a:
        a.execute("SET work_mem = '1MB'")
        assert a.execute("SHOW work_mem").fetchone() == ("1MB",)
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()
        a.commit()
        assert a.execute("SHOW work_mem").fetchone() == ("256MB",)
        a.commit()
    with psycopg.connect(tiny.conninfo(TINY, sslmode="disable"), autocommit=True) as b:
        assert b.execute("SELECT pg_backend_pid()").fetchone() == pid_a  # same server
        assert b.execute("SHOW work_mem").fetchone() == ("256MB",)


def test_waiting_for_a_server_times_out_with_53300(tiny):
    holder = psycopg.connect(tiny.conninfo(TINY, sslmode="disable"))
    waiter = psycopg.connect(tiny.conninfo(TINY, sslmode="disable"), autocommit=True)
    try:
        holder.execute("SELECT 1")  # opens a transaction: the only server is taken
        started = time.monotonic()
        with pytest.raises(psycopg.errors.TooManyConnections) as info:
            waiter.execute("SELECT 'waiting'")
        assert 0.4 < time.monotonic() - started < 3
        assert "query_wait_timeout" in (info.value.diag.message_detail or "")
        holder.commit()
        assert waiter.execute("SELECT 'served'").fetchone() == ("served",)
    finally:
        holder.close()
        waiter.close()


def test_prepared_statements_follow_clients_through_an_lru(tiny):
    async def go():
        conn = await asyncpg.connect(**tiny.asyncpg_kw(TINY), ssl=False)
        other = await asyncpg.connect(**tiny.asyncpg_kw(TINY), ssl=False)
        try:
            stmts = [await conn.prepare(f"SELECT $1::int + {k}") for k in range(10)]
            for _ in range(3):
                for k, stmt in enumerate(stmts):
                    assert await stmt.fetchval(1) == 1 + k
                    assert await other.fetchval(f"SELECT $1::int * {k}", 2) == 2 * k
            srv = next(iter(tiny.pool(TINY).members))
            assert len(srv.prepared) <= 3
        finally:
            await conn.close()
            await other.close()

        async def upstream_prepared() -> int:
            admin = await asyncpg.connect(tiny.backend().config.dsn)
            try:
                return await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                    tiny.backend().names(TINY.slug, "main")[0])
            finally:
                await admin.close()
        assert await upstream_prepared() == 1
    asyncio.run(go())


def test_session_mode_resets_the_server_between_clients():
    t = Tenant(unique("pgps"))
    with pg_gateway([t], mode="session", backend_options="pool_size = 1") as gw:
        with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as a:
            pid = a.execute("SELECT pg_backend_pid()").fetchone()
            a.execute("CREATE TEMP TABLE scratch (a int)")
            a.execute("SET work_mem = '2MB'")
            a.execute("PREPARE mine AS SELECT 1")
            a.execute("LISTEN somewhere")
        time.sleep(0.1)
        with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as b:
            assert b.execute("SELECT pg_backend_pid()").fetchone() == pid
            assert b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
            assert b.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
            assert b.execute("SHOW work_mem").fetchone() == ("4MB",)
            assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)


def test_1000_concurrent_idle_clients(tx_gw):
    t = tx_gw.tenants[1]

    async def go():
        sem = asyncio.Semaphore(100)

        async def one() -> psycopg.AsyncConnection:
            async with sem:
                return await psycopg.AsyncConnection.connect(
                    tx_gw.conninfo(t, sslmode="disable"), autocommit=True)

        conns = await asyncio.gather(*(one() for _ in range(1000)))
        try:
            assert len(tx_gw.door.clients) >= 1000
            assert len(tx_gw.pool(t).members) <= 10
            for conn in random.sample(conns, 50):
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
        finally:
            await asyncio.gather(*(c.close() for c in conns))
    asyncio.run(go())
    assert _wait(lambda: len(tx_gw.door.clients) < 10)


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def test_concurrent_threads_mixed_workload(gw):
    """psycopg clients in threads, transactions and errors interleaved on a shared pool."""
    failures = []

    def worker(n: int) -> None:
        try:
            with psycopg.connect(gw.conninfo(T, sslmode="disable")) as conn:
                for i in range(20):
                    with conn.transaction():
                        assert conn.execute("SELECT %s::int", (n * 100 + i,)).fetchone() == \
                            (n * 100 + i,)
                    if i % 7 == 0:
                        with pytest.raises(psycopg.errors.DivisionByZero):
                            conn.execute("SELECT 1 / 0")
                        conn.rollback()
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert failures == []


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_tier_change_reaches_open_sessions_at_their_next_checkout(gw, mode):
    """The session layer recomputes session.settings on a tier change; the pool applies
    them before the client's next statement (transaction mode: next transaction; session
    mode: next statement outside a transaction)."""
    if mode == "session":
        t = Tenant(unique("pgsm"), tier="free")
        ctx = pg_gateway([t], mode="session", extra='[[layers]]\ntype = "session"\n')
    else:
        t, ctx = MOVER, None
    with (ctx if ctx is not None else _same(gw)) as g, \
            psycopg.connect(g.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("16MB",)
        store = g.context.store
        g.call(store.update_tenant(t.slug, tier="starter"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = conn.execute("SHOW work_mem").fetchone()
            if got == ("64MB",):
                break
            time.sleep(0.2)
        assert got == ("64MB",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("",)


class _same:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False
