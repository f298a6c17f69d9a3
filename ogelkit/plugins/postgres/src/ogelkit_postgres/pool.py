"""One pool of upstream connections per tenant database.

``take()`` is the synchronous fast path (an idle connection, no coroutine); ``acquire()``
opens a connection or queues the caller for up to ``query_wait_timeout``. Connections
come back through ``checkin`` (handed straight to the longest waiter, else kept idle, most
recently used first so the others can time out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ogelkit_postgres.upstream import ServerConnection, UpstreamError

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Tier
    from ogelkit_postgres.backend import PostgresBackend

log = logging.getLogger("ogelkit.postgres")


#: Seconds a server connection may sit outside the pool with no client before it is closed.
ORPHAN_AFTER = 30.0
#: Seconds a server connection's reset (DISCARD ALL) may go unanswered before it is closed.
RESET_TIMEOUT = 5.0


class PoolTimeout(Exception):
    """No server connection became free within ``query_wait_timeout``."""


class Pool:
    def __init__(self, backend: PostgresBackend, db: DatabaseRecord):
        self.backend = backend
        self.db = db
        self.cfg = backend.config
        self.idle: list[ServerConnection] = []
        self.members: set[ServerConnection] = set()
        self.opening = 0
        self.waiters: deque[asyncio.Future[ServerConnection]] = deque()
        self.limit = self.cfg.pool_size
        self.closed = False
        self.asleep = False
        self.used = False  # min_pool_size applies once a client used the pool
        self.last_active = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- sizes -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.members) + self.opening

    def set_tier(self, tier: Tier | None) -> None:
        """The tier caps the pool: no tenant needs more server connections than its tier
        allows client connections (the role's CONNECTION LIMIT says the same upstream)."""
        cap = tier.connections if tier is not None else None
        self.limit = self.cfg.pool_size if cap is None else max(1, min(self.cfg.pool_size, cap))

    # -- checkout --------------------------------------------------------------------------
    def take(self, prefer: ServerConnection | None = None) -> ServerConnection | None:
        """An idle connection, ``prefer`` (the client's previous one) when it is idle: a
        client that keeps its server keeps the same sockets, buffers and backend hot."""
        idle = self.idle
        if prefer is not None and idle and idle[-1] is not prefer and not prefer.closed:
            try:
                idle.remove(prefer)
            except ValueError:
                pass
            else:
                self.used = True
                return prefer
        while idle:
            srv = idle.pop()
            if not srv.closed:
                self.used = True
                return srv
        return None

    async def acquire(self) -> ServerConnection:
        srv = self.take()
        if srv is not None:
            return srv
        if self.closed:
            raise UpstreamError("the backend is shutting down", "57P01")
        self.used = True
        self.asleep = False  # a client is here: the database is awake again
        if self.size < self.limit:
            return await self._open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ServerConnection] = loop.create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(self.cfg.query_wait_timeout):
                return await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # handed over just as the deadline hit
            raise PoolTimeout() from None
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.checkin(fut.result())
            raise
        finally:
            if not fut.done():
                fut.cancel()

    async def _open(self) -> ServerConnection:
        self.opening += 1
        try:
            host, port, user, password, dbname = await self.backend.upstream_target(self.db)
            srv = await self.backend.open_upstream(self, host, port, user, password, dbname)
        except BaseException as exc:
            self.opening -= 1
            if isinstance(exc, UpstreamError):
                self.backend.count_upstream_error("connect")
            self._refill_for_waiters()
            raise
        self.opening -= 1
        if self.closed:
            srv.close()
            raise UpstreamError("the backend is shutting down", "57P01")
        self.members.add(srv)
        return srv

    def _refill_for_waiters(self) -> None:
        """Capacity freed up (a connection died or failed to open): serve a waiter."""
        self._drop_done_waiters()
        if self.waiters and not self.closed and self.size < self.limit:
            self._spawn(self._open_for_waiter())

    async def _open_for_waiter(self) -> None:
        try:
            srv = await self._open()
        except UpstreamError as exc:
            self._drop_done_waiters()
            if self.waiters:
                self.waiters.popleft().set_exception(exc)
            return
        self.checkin(srv)

    def _drop_done_waiters(self) -> None:
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.popleft()

    # -- checkin ---------------------------------------------------------------------------
    def checkin(self, srv: ServerConnection) -> None:
        if srv.closed:
            return
        now = time.monotonic()
        self.last_active = now
        if (self.closed or self.asleep or srv.status != b"I"
                or now - srv.created > self.cfg.server_lifetime
                or len(self.members) > self.limit):
            srv.close()
            return
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(srv)
                return
        srv.last_used = now
        self.idle.append(srv)

    def discard(self, srv: ServerConnection) -> None:
        """Called when a connection is gone (from its ``connection_lost``)."""
        if srv in self.members:
            self.members.discard(srv)
            try:
                self.idle.remove(srv)
            except ValueError:
                pass
            self._refill_for_waiters()

    # -- maintenance -----------------------------------------------------------------------
    def maintain(self, now: float) -> None:
        cfg = self.cfg
        self._close_orphans(now)
        floor = self._floor()
        open_count = len(self.members)
        for srv in list(self.idle):
            too_old = now - srv.created > cfg.server_lifetime
            idle_out = now - srv.last_used > cfg.server_idle_timeout and open_count > floor
            if self.asleep or too_old or idle_out:
                self.idle.remove(srv)
                srv.close()
                open_count -= 1
        missing = floor - open_count - self.opening
        for _ in range(max(0, missing)):
            self._spawn(self._prewarm())

    def _close_orphans(self, now: float) -> None:
        """A server connection no client holds, not idle, with no cancel under way for
        ``ORPHAN_AFTER`` seconds, or whose reset went unanswered for ``RESET_TIMEOUT``
        seconds, is closed: whatever left it so (the fuzzer found session-mode resets that
        a client's last messages kept upstream from answering), it must not hold a slot of
        the pool forever."""
        idle = self.idle
        for srv in list(self.members):
            if srv.client is not None or srv.cancels_pending or srv.closed or srv in idle:
                srv.stuck_since = None
                continue
            if srv.stuck_since is None:
                srv.stuck_since = now
            elif now - srv.stuck_since > (RESET_TIMEOUT if srv.reset_pending else ORPHAN_AFTER):
                log.warning("closing an orphaned server connection (status %r, resets "
                            "pending %d)", srv.status, srv.reset_pending,
                            extra={"backend": self.backend.name, "tenant": self.db.tenant,
                                   "database": self.db.name})
                srv.close()

    def _floor(self) -> int:
        if self.asleep or self.closed or not self.used:
            return 0
        return min(self.cfg.min_pool_size, self.limit)

    async def _prewarm(self) -> None:
        try:
            srv = await self._open()
        except UpstreamError as exc:
            log.warning("could not open a pooled connection: %s", exc.message,
                        extra={"backend": self.backend.name, "tenant": self.db.tenant,
                               "database": self.db.name})
            return
        self.checkin(srv)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle -------------------------------------------------------------------------
    def sleep(self) -> None:
        self.asleep = True
        for srv in self.idle:
            srv.close()
        self.idle.clear()

    async def wake(self) -> None:
        self.asleep = False
        want = max(1, min(self.cfg.min_pool_size, self.limit)) - self.size
        if want > 0:
            await asyncio.gather(*(self._prewarm() for _ in range(want)))

    def close(self) -> None:
        self.closed = True
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(UpstreamError("the backend is shutting down", "57P01"))
        self.waiters.clear()
        for srv in list(self.members):
            srv.close()
        self.idle.clear()
        for task in self._tasks:
            task.cancel()

    def stats(self) -> dict[str, int]:
        idle = sum(1 for s in self.idle if not s.closed)
        return {"size": self.size, "idle": idle, "active": len(self.members) - idle,
                "opening": self.opening, "waiting": sum(1 for w in self.waiters if not w.done()),
                "limit": self.limit}

    def __repr__(self) -> str:
        return f"<Pool {self.db.tenant}/{self.db.name} {self.size}/{self.limit}>"
