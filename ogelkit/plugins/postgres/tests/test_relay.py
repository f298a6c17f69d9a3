"""Workloads through the gateway with real drivers, in both pooling modes."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest
from ogelkit_postgres import wire as pg
from ogelkit_postgres.testing import RawClient


@pytest.fixture(params=["transaction", "session"])
def gw(request):
    return request.getfixturevalue("tx_gw" if request.param == "transaction" else "session_gw")


def tenant(gw):
    return gw.tenants[0]


def test_asyncpg_prepared_statements_transactions_and_errors(gw):
    t = tenant(gw)

    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
        try:
            await conn.execute("DROP TABLE IF EXISTS items; "
                               "CREATE TABLE items (id int PRIMARY KEY, name text)")
            await conn.executemany("INSERT INTO items VALUES ($1, $2)",
                                   [(i, f"n{i}") for i in range(100)])
            stmt = await conn.prepare("SELECT name FROM items WHERE id = $1")
            for i in (1, 50, 99):
                assert await stmt.fetchval(i) == f"n{i}"
            async with conn.transaction():
                await conn.execute("DELETE FROM items WHERE id < 10")
                assert await conn.fetchval("SELECT count(*) FROM items") == 90
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO items VALUES (50, 'dup')")
            assert await conn.fetchval("SELECT count(*) FROM items") == 90
            tr = conn.transaction()
            await tr.start()
            await conn.execute("DELETE FROM items")
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM items") == 90
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute("SELEKT 1")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            assert await stmt.fetchval(70) == "n70"  # still prepared, still usable
            # A cursor (portal with a row limit) inside a transaction.
            async with conn.transaction():
                got = [r["id"] async for r in conn.cursor(
                    "SELECT id FROM items ORDER BY id", prefetch=7)]
            assert got == list(range(10, 100))
        finally:
            await conn.close()
    asyncio.run(go())


def test_asyncpg_copy(gw):
    t = tenant(gw)

    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
        try:
            await conn.execute("DROP TABLE IF EXISTS copied; CREATE TABLE copied (a int, b text)")
            rows = [(i, "x" * (i % 50)) for i in range(20_000)]
            res = await conn.copy_records_to_table("copied", records=rows)
            assert res == "COPY 20000"
            assert await conn.fetchval("SELECT sum(a) FROM copied") == sum(range(20_000))
            out = io.BytesIO()
            res = await conn.copy_from_query("SELECT a FROM copied WHERE a < 1000 ORDER BY a",
                                             output=out)
            assert res == "COPY 1000"
            assert out.getvalue().split() == [str(i).encode() for i in range(1000)]
        finally:
            await conn.close()
    asyncio.run(go())


def test_psycopg_pipeline_copy_and_prepared(gw):
    t = tenant(gw)
    with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS piped; CREATE TABLE piped (a int, b text)")
        with conn.pipeline():
            for i in range(200):
                conn.execute("INSERT INTO piped VALUES (%s, %s)", (i, str(i)))
            cur = conn.execute("SELECT count(*) FROM piped")
        assert cur.fetchone() == (200,)
        with conn.cursor() as cur, cur.copy("COPY piped FROM STDIN") as copy:
            for i in range(200, 5200):
                copy.write_row((i, "row"))
        assert conn.execute("SELECT count(*) FROM piped").fetchone() == (5200,)
        with conn.cursor() as cur, cur.copy("COPY (SELECT a FROM piped ORDER BY a) TO STDOUT") \
                as copy:
            got = [int(row[0]) for row in copy.rows()]
        assert got == list(range(5200))
        for i in range(8):  # psycopg prepares server-side after prepare_threshold uses
            assert conn.execute("SELECT b FROM piped WHERE a = %s", (i,),
                                prepare=True).fetchone() == (str(i),)
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1 / %s", (0,))
            conn.execute("SELECT 2")
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_psql_copy_and_multi_statement_queries(gw):
    t = tenant(gw)
    proc = subprocess.run(  # psql reads the \copy data from its stdin
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
         f"host=127.0.0.1 port={gw.port} user={t.slug} dbname=main sslmode=disable",
         "-c", "DROP TABLE IF EXISTS pc; CREATE TABLE pc (a int)",
         "-c", r"\copy pc from stdin", "-c", "SELECT count(*), sum(a) FROM pc; SELECT 'two'"],
        input="".join(f"{i}\n" for i in range(1000)), capture_output=True, text=True,
        env={**os.environ, "PGPASSWORD": t.password}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1000|499500", "two"]


def test_notices_and_parameter_status_pass_through(gw):
    t = tenant(gw)
    notices = []
    with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        assert notices == ["hello from plpgsql"]
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)


def test_listen_notify_in_session_mode(session_gw):
    t = tenant(session_gw)
    with psycopg.connect(session_gw.conninfo(t, sslmode="disable"), autocommit=True) as listener, \
            psycopg.connect(session_gw.conninfo(t, sslmode="disable"), autocommit=True) as sender:
        listener.execute("LISTEN jobs")
        sender.execute("NOTIFY jobs, 'payload-1'")
        sender.execute("SELECT pg_notify('jobs', 'payload-2')")
        got = []
        for n in listener.notifies(timeout=5, stop_after=2):
            got.append((n.channel, n.payload))
        assert got == [("jobs", "payload-1"), ("jobs", "payload-2")]


def test_listen_is_refused_in_transaction_mode(tx_gw):
    t = tenant(tx_gw)
    with psycopg.connect(tx_gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="session"):
            conn.execute("LISTEN jobs")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_100mb_result_streams_through_bounded_memory(gw):
    """100 MB of DataRows (and 100 MB of COPY out) pass while the gateway's process grows
    by far less than the result: rows are forwarded as they arrive, never collected."""
    t = tenant(gw)
    peak = [0]
    stop = threading.Event()
    base = _rss_kb()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        select = gw.psql(t, "-o", "/dev/null", "-c",
                         "SELECT repeat('x', 1000) FROM generate_series(1, 100000)", timeout=120)
        assert select.returncode == 0, select.stderr
        copy = gw.psql(t, "-c", r"\copy (SELECT repeat('y', 1000) FROM generate_series(1, 100000))"
                       " to '/dev/null'", timeout=120)
        assert copy.returncode == 0, copy.stderr
        assert copy.stdout.strip() == "COPY 100000"
    finally:
        stop.set()
        sampler.join()
    grew_mb = (peak[0] - base) / 1024
    assert grew_mb < 40, f"the test process grew by {grew_mb:.0f} MB while relaying 200 MB"


def _role_backends(gw, t, query_like: str = "%") -> list:
    async def go():
        conn = await asyncpg.connect(gw.backend().config.dsn)
        try:
            role = gw.backend().names(t.slug, "main")[0]
            return await conn.fetch(
                "SELECT pid, state, query FROM pg_stat_activity WHERE usename = $1 "
                "AND query LIKE $2 AND pid <> pg_backend_pid()", role, query_like)
        finally:
            await conn.close()
    return asyncio.run(go())


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_client_disconnecting_mid_result_leaks_no_server_connection(gw):
    t = tenant(gw)
    pool = None
    for _ in range(3):
        raw = RawClient(gw.port)
        assert raw.login(t.slug, t.password)[-1] == (b"Z", b"I")
        pool = gw.pool(t)
        raw.send(pg.query("SELECT repeat('z', 2000), g FROM generate_series(1, 5000000) g"))
        for _ in range(50):  # some rows have arrived: the result is streaming
            assert raw.message()[0] in (b"T", b"D")
        raw.sock.close()
    assert pool is not None
    # The abandoned queries are cancelled upstream and their connections closed.
    assert _wait_for(lambda: not _role_backends(gw, t, "%generate_series(1, 5000000)%"
                                                ) or all(r["state"] == "idle" for r in
                                                         _role_backends(gw, t, "%5000000%")))
    assert _wait_for(lambda: pool.stats()["active"] == 0), pool.stats()
    with psycopg.connect(gw.conninfo(t, sslmode="disable")) as conn:
        assert conn.execute("SELECT 'fine'").fetchone() == ("fine",)


def test_cancel_pg_sleep_from_the_client(gw):
    t = tenant(gw)
    with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as conn:
        # cancel_safe: the old blocking PQcancel keeps the GIL while it waits for the
        # gateway, which runs in this very process.
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
        timer.join()
        assert conn.execute("SELECT 'reusable'").fetchone() == ("reusable",)

    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), ssl=False)
        try:
            with pytest.raises(TimeoutError):  # asyncpg sends a CancelRequest on timeout
                await conn.fetchval("SELECT pg_sleep(10)", timeout=0.5)
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()
    asyncio.run(go())


def test_upstream_backend_killed_mid_query(gw):
    t = tenant(gw)
    errors = []

    def victim():
        try:
            with psycopg.connect(gw.conninfo(t, sslmode="disable")) as conn:
                conn.execute("SELECT pg_sleep(8) AS victim_marker")
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=victim)
    thread.start()
    assert _wait_for(lambda: _role_backends(gw, t, "%victim_marker%"), 5)
    pid = _role_backends(gw, t, "%victim_marker%")[0]["pid"]

    async def kill():
        conn = await asyncpg.connect(gw.backend().config.dsn)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
    started = time.monotonic()
    asyncio.run(kill())
    thread.join(10)
    assert time.monotonic() - started < 5
    assert len(errors) == 1
    # The server's own FATAL (57P01 admin shutdown) reaches the client.
    assert errors[0].sqlstate in ("57P01", "08006") or "terminating connection" in str(errors[0])
    with psycopg.connect(gw.conninfo(t, sslmode="disable")) as conn:
        assert conn.execute("SELECT 'next client served'").fetchone() == ("next client served",)


def test_every_upstream_connection_dropped_like_a_server_restart(gw):
    """All upstream connections of the tenant die at once (what a PostgreSQL restart does):
    in-flight clients get an error, then new work is served on fresh connections."""
    t = tenant(gw)
    with psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True) as warm:
        warm.execute("SELECT 1")

    async def kill_all():
        conn = await asyncpg.connect(gw.backend().config.dsn)
        try:
            role = gw.backend().names(t.slug, "main")[0]
            return await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = $1", role)
        finally:
            await conn.close()
    survivor = psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True)
    try:
        survivor.execute("SELECT 1")
        assert asyncio.run(kill_all()) >= 1
        time.sleep(0.2)
        if gw.backend().config.pool_mode == "transaction":
            # Idle between transactions, the client held no server: it just goes on.
            assert survivor.execute("SELECT 'still connected'").fetchone() == ("still connected",)
        else:
            with pytest.raises(psycopg.OperationalError):
                survivor.execute("SELECT 1")
    finally:
        survivor.close()
    with psycopg.connect(gw.conninfo(t, sslmode="disable")) as conn:
        assert conn.execute("SELECT 'recovered'").fetchone() == ("recovered",)
