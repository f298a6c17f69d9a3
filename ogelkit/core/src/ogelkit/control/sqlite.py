"""SQLite control plane (the embedded default for one gateway).

sqlite3 blocks, so the connection lives on one worker thread of its own: every statement of
every transaction runs there, in order, never two at once. An asyncio-side lock makes
transactions exclusive on that connection. WAL mode lets the CLI write while a gateway reads.

Cancellation (a client resetting mid-login, a probe's timeout) can hit any await of a
transaction. It never leaves the transaction open or the connection busy: a statement
already handed to the thread is waited out, the ROLLBACK or COMMIT that ends the
transaction always runs, and the lock is released only once the connection is idle
outside any transaction. Waiting for another process's write lock (the CLI) is done in
short steps between cancellable sleeps, so a cancelled ``BEGIN`` returns quickly.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ogelkit.control.cancel import uninterrupted
from ogelkit.control.store import Store, Tx

log = logging.getLogger("ogelkit.control")

T = TypeVar("T")

BUSY_TIMEOUT = 10.0  # seconds a transaction waits for another process's write lock
_BUSY_STEP_MS = 50   # how long one BEGIN attempt may block the worker thread


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``."""
    rest = url.removeprefix("sqlite://")
    rest = rest[1:] if rest.startswith("/") else rest
    return rest or ":memory:"


def _busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class _SqliteTx(Tx):
    def __init__(self, store: SqliteStore, conn: sqlite3.Connection):
        self.store = store
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        conn = self.conn
        return await self.store._call(lambda: conn.execute(sql, args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        conn = self.conn
        return await self.store._call(lambda: conn.execute(sql, args).fetchall())


def _begin(conn: sqlite3.Connection, verb: str) -> None:
    if conn.in_transaction:
        # Never expected (every transaction is ended below); heal rather than wedge.
        log.error("control plane: a transaction was left open; rolling it back")
        conn.execute("ROLLBACK")
    conn.execute(verb)


def _end(conn: sqlite3.Connection, commit: bool) -> None:
    if not conn.in_transaction:
        return
    if not commit:
        conn.execute("ROLLBACK")
        return
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (SQLITE_BUSY, I/O) keeps it open
            conn.execute("ROLLBACK")
        raise


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str, secret_key: str, *, busy_timeout: float = BUSY_TIMEOUT):
        super().__init__(url, secret_key)
        self.path = sqlite_path(url)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = anyio.Lock()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the connection's thread; a cancelled caller waits for it to end."""
        if self._thread is None:
            raise RuntimeError("store is not open")
        return await uninterrupted(asyncio.wrap_future(self._thread.submit(fn)))

    async def open(self) -> None:
        path = self.path

        def connect() -> sqlite3.Connection:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Only this thread ever touches the connection (check_same_thread holds).
            conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_STEP_MS / 1000)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(f"PRAGMA busy_timeout={_BUSY_STEP_MS}")
            except BaseException:
                conn.close()
                raise
            return conn

        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ogelkit-sqlite")
        try:
            self._conn = await self._call(connect)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        async with self._lock:  # let a running transaction end first
            conn, self._conn = self._conn, None
            thread, self._thread = self._thread, None
            if conn is not None:
                await uninterrupted(asyncio.wrap_future(thread.submit(conn.close)))
            thread.shutdown(wait=False)

    async def _begin(self, conn: sqlite3.Connection, verb: str) -> None:
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.005
        while True:
            try:
                await self._call(lambda: _begin(conn, verb))
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            await anyio.sleep(pause)  # cancellable: nothing is open here
            pause = min(pause * 2, 0.1)

    def tx(self) -> AbstractAsyncContextManager[Tx]:
        """A read-write transaction: it takes the write lock at once (BEGIN IMMEDIATE), so
        it cannot fail half-way for a lock another process holds."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only transaction (BEGIN DEFERRED): in WAL mode it never waits for, nor
        holds off, a writer."""
        return self._transaction("BEGIN")

    @asynccontextmanager
    async def _transaction(self, verb: str) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("store is not open")
            try:
                await self._begin(conn, verb)
                yield _SqliteTx(self, conn)
            except BaseException:
                await self._call(lambda: _end(conn, commit=False))
                raise
            await self._call(lambda: _end(conn, commit=True))
