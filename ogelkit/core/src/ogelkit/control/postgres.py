"""PostgreSQL control plane: shared by several gateway replicas (asyncpg pool).

Cancellation can hit any await of a transaction (a client resetting mid-login, a probe's
timeout). A control-plane statement takes a millisecond, so a cancelled caller lets the
one in flight (or the connect, BEGIN, COMMIT or ROLLBACK) finish, for ``CANCEL_GRACE`` at
most, before the cancellation goes through; only a statement still running then is
cancelled by asyncpg (a CancelRequest to the server). Either way the transaction is rolled
back, and the pool's release resets the connection (or drops it when that fails): the
pool never lends out a connection still in a transaction.

An outage of the server is an error at once (``acquire`` has a timeout), never a wait
without end; when the server is back the pool reconnects by itself. Connections the server
closed while they sat idle in the pool are found out at ``BEGIN`` (nothing of the caller's
has run yet) and replaced, so the first transactions after a restart do not fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ogelkit.control.cancel import uninterrupted
from ogelkit.control.store import Store, Tx

T = TypeVar("T")

_MARK = re.compile(r"\?")
_MIGRATION_LOCK = 0x06E1_C0DE  # pg_advisory_xact_lock key: one migrator at a time

ACQUIRE_TIMEOUT = 10.0  # seconds to get a pooled connection (including connecting)
COMMAND_TIMEOUT = 30.0  # seconds one control-plane statement may take
CANCEL_GRACE = 1.0      # seconds a cancelled caller waits for its statement to finish

# Errors of a connection that was already dead when taken from the pool.
_STALE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
          asyncpg.exceptions.AdminShutdownError, OSError)


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


async def _finish(aw: Awaitable[T]) -> T:
    return await uninterrupted(aw, grace=CANCEL_GRACE)


class _PgTx(Tx):
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await _finish(self.conn.execute(_numbered(sql), *args))
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        return [tuple(r) for r in await _finish(self.conn.fetch(_numbered(sql), *args))]


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, secret_key: str, *, min_size: int = 1, max_size: int = 5,
                 acquire_timeout: float = ACQUIRE_TIMEOUT,
                 command_timeout: float = COMMAND_TIMEOUT):
        super().__init__(url, secret_key)
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)
        self.acquire_timeout = acquire_timeout
        self.command_timeout = command_timeout

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self._sizes[0],
                                               max_size=self._sizes[1],
                                               timeout=self.acquire_timeout,
                                               command_timeout=self.command_timeout)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.Connection:
        getting = asyncio.ensure_future(pool.acquire(timeout=self.acquire_timeout))
        try:
            return await _finish(getting)
        except asyncio.CancelledError:
            if getting.done() and not getting.cancelled() and getting.exception() is None:
                await pool.release(getting.result())  # got it just as the caller left
            raise

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        attempts = self._sizes[1] + 1  # at worst every pooled connection is stale
        for attempt in range(attempts):
            conn = await self._acquire(pool)
            transaction = conn.transaction()
            try:
                await _finish(transaction.__aenter__())
                break
            except BaseException as exc:
                await pool.release(conn)
                stale = isinstance(exc, _STALE) and not isinstance(exc, TimeoutError)
                if not stale or attempt == attempts - 1:
                    raise
        try:
            try:
                yield _PgTx(conn)
            except BaseException:
                # A failed ROLLBACK is left to the pool's release (it drops the connection).
                with contextlib.suppress(Exception):
                    await _finish(transaction.__aexit__(*sys.exc_info()))
                raise
            await _finish(transaction.__aexit__(None, None, None))
        finally:
            await pool.release(conn)

    async def _lock_for_migration(self, tx: Tx) -> None:
        await tx.fetch("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
