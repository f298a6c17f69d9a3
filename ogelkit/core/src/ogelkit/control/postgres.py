"""PostgreSQL control plane: shared by several gateway replicas (asyncpg pool).

Cancellation can hit any await of a transaction (a client resetting mid-login, a probe's
timeout). A control-plane statement takes a millisecond, so a cancelled caller lets the
one in flight (or the connect, BEGIN, COMMIT or ROLLBACK) finish, for ``CANCEL_GRACE`` at
most, before the cancellation goes through; only a statement still running then is
cancelled by asyncpg (a CancelRequest to the server). Either way the transaction is rolled
back, and the pool's release resets the connection (or drops it when that fails): the
pool never lends out a connection still in a transaction.

Outages. Getting a connection has a timeout and so has every statement, so an unreachable
server is an error, never a wait without end. Once a transaction has failed because the
server could not be reached, the store is *unavailable*: transactions fail at once with
``StoreUnavailable`` (logins of uncached tenants get a clean refusal, cached tenants are
served from the gateway's cache without waiting for a timeout each) while one background
probe retries every ``RETRY_AFTER`` seconds; its first success makes the store available
again, without a restart. Connections the server closed while they sat idle in the pool
are found out at ``BEGIN`` (nothing of the caller's has run yet) and replaced, so the
first transactions after a server restart do not fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ogelkit.control.cancel import uninterrupted
from ogelkit.control.store import Store, StoreUnavailable, Tx

log = logging.getLogger("ogelkit.control")

T = TypeVar("T")

_MARK = re.compile(r"\?")
_MIGRATION_LOCK = 0x06E1_C0DE  # pg_advisory_xact_lock key: one migrator at a time

ACQUIRE_TIMEOUT = 5.0   # seconds to get a pooled connection in a transaction (connect, BEGIN)
COMMAND_TIMEOUT = 15.0  # seconds one control-plane statement may take
CANCEL_GRACE = 1.0      # seconds a cancelled caller waits for its statement to finish
RETRY_AFTER = 1.0       # seconds between probes of an unreachable server

# Errors of a connection that was already dead when taken from the pool.
_STALE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
          asyncpg.exceptions.AdminShutdownError, OSError)
# Errors that say the server cannot be reached (TimeoutError is an OSError).
_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError,
                asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.AdminShutdownError,
                asyncpg.exceptions.CrashShutdownError)


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


def _terminate(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):  # asyncpg may have closed and released it already
        if not conn.is_closed():
            conn.terminate()


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

    # min_size 0: no connection "floor" for asyncpg to restore (and log tracebacks about)
    # while the server is unreachable; the pool keeps idle connections open anyway.
    def __init__(self, url: str, secret_key: str, *, min_size: int = 0, max_size: int = 5,
                 acquire_timeout: float = ACQUIRE_TIMEOUT,
                 command_timeout: float = COMMAND_TIMEOUT,
                 retry_after: float = RETRY_AFTER):
        super().__init__(url, secret_key)
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)
        self.acquire_timeout = acquire_timeout
        self.command_timeout = command_timeout
        self.retry_after = retry_after
        #: Why the server is unreachable (None while it is reachable), and since when.
        self.unavailable: str | None = None
        self._unavailable_since = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._reached = False  # a first transaction succeeded (startup errors stay errors)

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self._sizes[0],
                                               max_size=self._sizes[1],
                                               timeout=self.acquire_timeout,
                                               command_timeout=self.command_timeout)

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(BaseException):
                await probe
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.acquire_timeout)
            except Exception as exc:  # a server gone mid-close: just drop the sockets
                log.warning("control plane pool did not close cleanly: %r", exc)
                pool.terminate()

    # -- availability ----------------------------------------------------------------------
    def _refuse(self) -> StoreUnavailable:
        for_ = time.monotonic() - self._unavailable_since
        return StoreUnavailable(f"the control plane has been unreachable for {for_:.0f}s: "
                                f"{self.unavailable}")

    def _lost(self, exc: BaseException) -> None:
        if self.unavailable is None:
            self._unavailable_since = time.monotonic()
            log.warning("control plane unreachable: %s", exc or type(exc).__name__)
        self.unavailable = str(exc) or type(exc).__name__
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        while self._pool is not None:
            await asyncio.sleep(self.retry_after)
            try:
                async with self._transaction() as tx:
                    await tx.fetch("SELECT 1")
            except Exception as exc:
                self.unavailable = str(exc) or type(exc).__name__
                continue
            down = time.monotonic() - self._unavailable_since
            log.warning("control plane reachable again after %.1fs", down)
            self.unavailable = None
            return

    # -- transactions ----------------------------------------------------------------------
    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        if self.unavailable is not None:
            raise self._refuse()
        try:
            async with self._transaction() as tx:
                yield tx
        except _UNREACHABLE as exc:
            if self._reached and self._pool is not None and not isinstance(exc, StoreUnavailable):
                self._lost(exc)
            raise
        self._reached = True

    async def _acquire(self, pool: asyncpg.Pool, within: float) -> asyncpg.Connection:
        getting = asyncio.ensure_future(pool.acquire(timeout=within))
        try:
            return await _finish(getting)
        except asyncio.CancelledError:
            if getting.done() and not getting.cancelled() and getting.exception() is None:
                await pool.release(getting.result())  # got it just as the caller left
            raise

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Tx]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        # Connecting (or taking an idle connection) and BEGIN, retries included, get
        # acquire_timeout in all: a silent server costs that much once, not per attempt.
        deadline = loop.time() + self.acquire_timeout
        attempts = self._sizes[1] + 1  # at worst every pooled connection is stale
        for attempt in range(attempts):
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no control plane connection in time")
            conn = await self._acquire(pool, left)
            transaction = conn.transaction()
            try:
                left = max(deadline - loop.time(), 0.001)
                await _finish(asyncio.wait_for(transaction.__aenter__(), left))
                break
            except BaseException as exc:
                if isinstance(exc, _UNREACHABLE):
                    _terminate(conn)  # not worth a reset (nor a wait for one)
                await pool.release(conn)
                stale = (isinstance(exc, _STALE) and not isinstance(exc, TimeoutError)
                         and loop.time() < deadline)
                if not stale or attempt == attempts - 1:
                    raise
        try:
            try:
                yield _PgTx(conn)
            except BaseException as exc:
                if isinstance(exc, _UNREACHABLE):
                    _terminate(conn)  # the server is gone: nothing to roll back there
                    raise
                # A failed ROLLBACK is left to the pool's release (it drops the connection).
                with contextlib.suppress(Exception):
                    await _finish(transaction.__aexit__(*sys.exc_info()))
                raise
            await _finish(transaction.__aexit__(None, None, None))
        finally:
            await pool.release(conn)

    async def _lock_for_migration(self, tx: Tx) -> None:
        await tx.fetch("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
