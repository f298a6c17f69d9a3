"""Cancellation at any await of a control-plane transaction leaves the store healthy.

Regression tests for issue 16, defect 1: a login task cancelled while ``BEGIN IMMEDIATE``
ran in a worker thread left the SQLite transaction open forever ("cannot start a
transaction within a transaction" for every later one, /readyz 503, "database is locked"
for the CLI). Both engines run against real databases (a file, the test PostgreSQL).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import anyio
import anyio.to_thread
import asyncpg
import pytest

from ogelkit.control.cancel import uninterrupted
from ogelkit.control.sqlite import SqliteStore
from ogelkit.control.store import open_store
from ogelkit.testing import test_secret_key

pytestmark = pytest.mark.anyio

INSERT = ("INSERT INTO tenants (slug, tier, status, created_at, updated_at) "
          "VALUES (?, 'free', 'active', 0, 0)")


async def opened(url: str):
    store = open_store(url, test_secret_key())
    await store.open()
    await store.migrate()
    return store


async def write_pair(store, i: int, pause: float = 0.0) -> None:
    """One transaction of two statements: both rows land, or neither does."""
    async with store.tx() as tx:
        await tx.execute(INSERT, f"a{i}")
        if pause:
            await anyio.sleep(pause)
        await tx.execute(INSERT, f"b{i}")


async def assert_pairs_whole(store) -> int:
    slugs = {t.slug for t in await store.list_tenants()}
    a = {s[1:] for s in slugs if s.startswith("a")}
    b = {s[1:] for s in slugs if s.startswith("b")}
    assert a == b, f"half-applied transactions: {sorted(a ^ b)[:10]}"
    return len(a)


async def assert_healthy(store) -> None:
    """Every kind of transaction works at once, reads and writes."""
    with anyio.fail_after(15):
        await store.ping()
        slug = f"h{random.randrange(10**9)}"
        await store.create_tenant(slug, "free")
        assert (await store.update_tenant(slug, tier="pro")).tier == "pro"
        assert (await store.get_tenant(slug)).tier == "pro"
        await store.delete_tenant(slug)
    if isinstance(store, SqliteStore) and hasattr(store, "_call"):
        assert not store._lock.locked()
        conn = store._conn
        assert await store._call(lambda: conn.in_transaction) is False


# -- SQLite: every await point, deterministically -----------------------------------------

# The awaits of ``write_pair`` on the connection's thread: BEGIN, INSERT, INSERT, COMMIT.
POINTS = ["begin", "first statement", "second statement", "commit"]


@pytest.mark.parametrize("how", ["task.cancel", "task.cancel twice", "cancel scope"])
@pytest.mark.parametrize("point", range(len(POINTS)), ids=POINTS)
async def test_sqlite_cancel_while_each_step_runs_in_the_thread(tmp_path, point, how):
    store = await opened(f"sqlite:///{tmp_path}/control.db")
    real_call = store._call
    target: dict = {}
    try:
        for i in range(5):
            calls = 0
            target.clear()

            async def call(fn, i=i):
                nonlocal calls
                calls += 1
                if calls == point + 1:
                    def slow():
                        time.sleep(0.02)  # the step is surely in flight when the cancel lands
                        return fn()
                    loop = asyncio.get_running_loop()
                    if how == "cancel scope":
                        loop.call_soon(target["scope"].cancel)
                    else:
                        loop.call_soon(target["task"].cancel)
                        if how == "task.cancel twice":
                            loop.call_later(0.01, target["task"].cancel)
                    return await real_call(slow)
                return await real_call(fn)

            store._call = call
            if how == "cancel scope":
                with anyio.CancelScope() as scope:
                    target["scope"] = scope
                    await write_pair(store, i)
                assert scope.cancelled_caught
            else:
                task = asyncio.ensure_future(write_pair(store, i))
                target["task"] = task
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert calls >= point + 1
            store._call = real_call
            await assert_healthy(store)
        applied = await assert_pairs_whole(store)
        # A cancel during COMMIT cannot take the commit back; before it, nothing lands.
        assert applied == (5 if POINTS[point] == "commit" else 0)
    finally:
        store._call = real_call
        await store.close()


async def test_sqlite_many_concurrent_logins_cancelled_at_random(tmp_path):
    """The shape of the original wedge: lookups of many logins cancelled at random."""
    store = await opened(f"sqlite:///{tmp_path}/control.db")
    try:
        await store.create_tenant("acme", "free")
        for _ in range(150):
            tasks = [asyncio.ensure_future(store.get_tenant("acme")) for _ in range(8)]
            await asyncio.sleep(random.random() * 0.003)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.ping()
        await assert_healthy(store)
    finally:
        await store.close()


async def test_sqlite_waits_for_another_process_lock_and_cancels_promptly(tmp_path):
    path = tmp_path / "control.db"
    store = SqliteStore(f"sqlite:///{path}", test_secret_key(), busy_timeout=1.0)
    await store.open()
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)  # the CLI, say
    try:
        other.execute("BEGIN IMMEDIATE")
        # A wait for the other writer can be cancelled, quickly.
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await store.create_tenant("acme", "free")
        assert scope.cancelled_caught
        assert time.monotonic() - started < 3.0
        # A wait longer than busy_timeout is a clean error, not a wedge.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.create_tenant("acme", "free")
        other.execute("ROLLBACK")
        await store.create_tenant("acme", "free")
        # and the other process can write again too
        other.execute("UPDATE tenants SET tier = 'pro' WHERE slug = 'acme'")
        assert (await store.get_tenant("acme")).tier == "pro"
        await assert_healthy(store)
    finally:
        other.close()
        await store.close()


async def test_sqlite_reads_never_wait_for_another_writer(tmp_path):
    """Login lookups and /readyz only read: they neither wait for the CLI's write lock nor
    hold it off (so a login storm cannot make the CLI say "database is locked")."""
    path = tmp_path / "control.db"
    store = await opened(f"sqlite:///{path}")
    await store.create_tenant("acme", "free")
    other = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE tenants SET tier = 'pro' WHERE slug = 'acme'")
        with anyio.fail_after(2):  # far below busy_timeout
            for _ in range(50):
                await store.ping()
                assert (await store.get_tenant("acme")).tier == "free"  # not committed yet
                assert await store.get_verifier("acme") is None
                assert await store.list_databases("acme") == []
        other.execute("COMMIT")
        assert (await store.get_tenant("acme")).tier == "pro"
        # While the gateway reads in a loop, the other process still gets to write.
        stop = anyio.Event()

        async def reader() -> None:
            while not stop.is_set():
                await store.get_tenant("acme")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(reader)
            for tier in ("free", "pro", "free"):
                await anyio.to_thread.run_sync(
                    other.execute, "UPDATE tenants SET tier = ? WHERE slug = 'acme'", (tier,))
            stop.set()
        assert (await store.get_tenant("acme")).tier == "free"
        await assert_healthy(store)
    finally:
        other.close()
        await store.close()


# -- both engines: random cancellation of concurrent writers ------------------------------

async def test_cancel_storm_leaves_the_store_whole_and_healthy(control_url):
    store = await opened(control_url)
    try:
        started = time.monotonic()
        await write_pair(store, -1)
        one = max(time.monotonic() - started, 0.001)
        for round_ in range(120):
            tasks = [asyncio.ensure_future(write_pair(store, round_ * 10 + k,
                                                      pause=random.choice((0, 0, 0.001))))
                     for k in range(6)]
            await asyncio.sleep(random.random() * one * 4)
            for t in random.sample(tasks, 4):
                t.cancel()
                if random.random() < 0.3:
                    t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                assert r is None or isinstance(r, asyncio.CancelledError), r
        applied = await assert_pairs_whole(store)
        assert applied >= 1
        await assert_healthy(store)
        if store.dialect == "postgres":
            await assert_postgres_pool_clean(store, control_url)
    finally:
        await store.close()


async def test_readiness_probe_timeouts_do_not_wedge(control_url):
    """/readyz wraps the ping in fail_after(2): cancel pings at every moment."""
    store = await opened(control_url)
    try:
        for _ in range(200):
            with anyio.move_on_after(random.random() * 0.004):
                await store.ping()
        await assert_healthy(store)
    finally:
        await store.close()


async def assert_postgres_pool_clean(store, url: str) -> None:
    # No server session is left inside a transaction...
    conn = await asyncpg.connect(url)
    try:
        with anyio.fail_after(20):
            while True:
                stuck = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")
                if stuck == 0:
                    break
                await anyio.sleep(0.1)
    finally:
        await conn.close()
    # ...and every pooled connection can be had again (none leaked).
    size = store._sizes[1]
    entered = 0
    all_in = anyio.Event()

    async def hold() -> None:
        nonlocal entered
        async with store.tx() as tx:
            await tx.fetch("SELECT 1")
            entered += 1
            if entered == size:
                all_in.set()
            await all_in.wait()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(size):
                tg.start_soon(hold)


# -- the helper itself ---------------------------------------------------------------------

async def test_uninterrupted_finishes_then_lets_the_cancel_through():
    done = []

    async def work():
        await asyncio.sleep(0.05)
        done.append(1)
        return 42

    task = asyncio.ensure_future(uninterrupted(work()))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == [1]
    assert await uninterrupted(work()) == 42
    with anyio.move_on_after(0.01) as scope:
        await uninterrupted(work())
    assert scope.cancelled_caught and done == [1, 1, 1]
