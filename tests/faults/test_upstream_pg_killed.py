"""The upstream PostgreSQL server killed in the middle of queries, then restarted, under a
real ``ogelkit run``: the clients mid-query get the documented error, another tenant on
another server is not disturbed, the gateway serves the restarted server by itself, and its
pool neither leaks slots nor keeps connections the server does not know.

The killed server is a private cluster of the test's own (``PrivatePostgres``), taken down
three ways: SIGKILL of the postmaster and ``pg_ctl stop -m immediate`` (the sockets close
with no error message, only a WARNING for the latter: the gateway answers ``08006``), and
``pg_ctl stop -m fast`` (the server's own FATAL ``57P01`` admin_shutdown reaches the
client). See docs/plugins/postgres.md, "Failures" and the error table.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from ogelkit.testing.services import pg_dsn

from .conftest import NAME_PREFIX, FaultGateway, PrivatePostgres, Tenant, fault_gateway, wait_for

POOL = 3  # the private backend's pool_size: every slot is busy when the server dies


def body(cluster: PrivatePostgres) -> str:
    return (
        f'[backends.pg]\ntype = "postgres"\ndsn = "{pg_dsn()}"\n'
        f'name_prefix = "{NAME_PREFIX}"\n\n'
        f'[backends.priv]\ntype = "postgres"\ndsn = "{cluster.dsn}"\n'
        f'name_prefix = "{NAME_PREFIX}"\npool_size = {POOL}\nconnect_timeout = "1s"\n'
        'query_wait_timeout = "5s"\n\n'
        '[[layers]]\ntype = "session"\n'
    )


def kw(gw: FaultGateway, t: Tenant) -> dict:
    return {
        "host": "127.0.0.1",
        "port": gw.port("postgres"),
        "user": t.slug,
        "password": t.password,
        "database": "main",
        "ssl": False,
        "timeout": 10,
    }


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of the server error behind an asyncpg error: asyncpg raises
    ConnectionDoesNotExistError (08003) from the FATAL error that preceded the close."""
    found = None
    while exc is not None:
        if isinstance(exc, asyncpg.PostgresError):
            found = exc.sqlstate
        exc = exc.__cause__
    return found


class Neighbour:
    """The other tenant's client (shared server): a query every 20 ms, each timed."""

    def __init__(self) -> None:
        self.done: list[tuple[float, float]] = []  # (finished at, latency)
        self.errors: list[BaseException] = []
        self.stop = asyncio.Event()

    async def run(self, conn_kw: dict) -> None:
        conn = await asyncpg.connect(**conn_kw)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    assert await conn.fetchval("SELECT 41 + 1") == 42
                except Exception as exc:
                    self.errors.append(exc)
                else:
                    self.done.append((time.monotonic(), time.monotonic() - started))
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def between(self, start: float, end: float) -> list[float]:
        return [lat for at, lat in self.done if start <= at <= end]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "sqlstate"), [("sigkill", "08006"), ("immediate", "08006"), ("fast", "57P01")]
)
def test_upstream_killed_mid_query_then_restarted(tmp_path, private_pg, how, sqlstate):
    victim = Tenant("fpgv", databases={"main": "priv"})
    other = Tenant("fpgo", databases={"main": "pg"})
    with fault_gateway(tmp_path, [victim, other], body(private_pg), plugins="postgres,session") as gw:
        asyncio.run(scenario(gw, private_pg, victim, other, how, sqlstate))


async def scenario(
    gw: FaultGateway, cluster: PrivatePostgres, victim: Tenant, other: Tenant, how: str, sqlstate: str
) -> None:
    neighbour = Neighbour()
    neighbour_task = asyncio.create_task(neighbour.run(kw(gw, other)))
    # Every pool slot busy with a long statement when the server dies.
    sleepers = [await asyncpg.connect(**kw(gw, victim)) for _ in range(POOL)]
    queries = [asyncio.create_task(c.fetchval("SELECT pg_sleep(30)")) for c in sleepers]

    def sleeping() -> bool:
        return (
            cluster.sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            )[0][0]
            == POOL
        )

    await asyncio.to_thread(wait_for, sleeping, 10, "the pg_sleeps running upstream")

    killed = time.monotonic()
    if how == "sigkill":
        await asyncio.to_thread(cluster.kill)
    else:
        await asyncio.to_thread(cluster.stop, how)
    assert not cluster.running()

    # Each client mid-query gets the error at once (not after its 30 s), then is closed.
    outcomes = await asyncio.wait_for(asyncio.gather(*queries, return_exceptions=True), 10)
    took = time.monotonic() - killed
    for exc in outcomes:
        # asyncpg raises ConnectionDoesNotExistError for a FATAL error followed by the
        # close, from the server error it received (its __cause__).
        assert isinstance(exc, Exception), repr(exc)
        assert sqlstate_of(exc) == sqlstate, (sqlstate_of(exc), repr(exc))
    assert took < 5, f"the clients mid-query waited {took:.1f}s for their error"
    for conn in sleepers:
        assert conn.is_closed()  # FATAL: that connection ends, as a direct one would
    print(f"{how}: {POOL} clients mid-query got {sqlstate} in {took:.2f}s")

    # While the server is down: a new client of that database is refused cleanly...
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)) as refused:
        conn = await asyncpg.connect(**kw(gw, victim))
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    assert sqlstate_of(refused.value) == "08006", repr(refused.value)
    down_for = 2.0
    await asyncio.sleep(down_for)
    # ...and the other tenant, on another server, kept being served without a hiccup.
    during = neighbour.between(killed, time.monotonic())
    assert not neighbour.errors, neighbour.errors
    assert len(during) >= 0.5 * down_for / 0.02 * 0.5, len(during)
    assert max(during) < 1.0, f"neighbour's slowest query during the outage: {max(during):.3f}s"

    # The server comes back: the gateway serves it without a restart.
    await asyncio.to_thread(cluster.start)
    back = time.monotonic()

    async def fresh_query() -> bool:
        conn = await asyncpg.connect(**kw(gw, victim))
        try:
            return await conn.fetchval("SELECT 'served again'") == "served again"
        finally:
            await conn.close()

    deadline = back + 10
    while True:
        try:
            assert await fresh_query()
            break
        except (asyncpg.PostgresError, OSError) as exc:
            assert time.monotonic() < deadline, f"not served 10 s after the restart: {exc!r}"
            await asyncio.sleep(0.1)
    print(f"{how}: served again {time.monotonic() - back:.2f}s after the server restarted")

    # No leaked pool slot: POOL clients at once each get a server (a slot still counted
    # for a dead connection would make one wait query_wait_timeout and fail with 53300),
    # twice over with more clients than slots.
    async def one(i: int) -> int:
        conn = await asyncpg.connect(**kw(gw, victim))
        try:
            return await conn.fetchval("SELECT $1::int FROM pg_sleep(0.3)", i)
        finally:
            await conn.close()

    started = time.monotonic()
    assert await asyncio.gather(*(one(i) for i in range(2 * POOL))) == list(range(2 * POOL))
    assert time.monotonic() - started < 4  # two rounds of 0.3 s, never a 5 s wait

    # The gateway's pool and the server agree: nothing active, at most POOL idle, and each
    # one it counts is a live backend upstream (none left over from the dead server).
    active = gw.metric("ogelkit_upstream_connections", backend="priv", state="active")
    idle = gw.metric("ogelkit_upstream_connections", backend="priv", state="idle")
    upstream = await asyncio.to_thread(cluster.tenant_backends)
    assert active == 0 and idle <= POOL, (active, idle)
    assert upstream == idle, (upstream, idle)
    print(f"{how}: after recovery the pool holds {idle:.0f} idle, the server has {upstream}")

    neighbour.stop.set()
    await neighbour_task
    assert not neighbour.errors, neighbour.errors
