"""SQLite control plane (the embedded default for one gateway).

sqlite3 blocks, so every statement runs in a worker thread; a lock makes transactions
exclusive on the single connection. WAL mode lets the CLI write while a gateway reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ogelkit.control.store import Store, Tx


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``."""
    rest = url.removeprefix("sqlite://")
    rest = rest[1:] if rest.startswith("/") else rest
    return rest or ":memory:"


class _SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        def run() -> int:
            return self.conn.execute(sql, args).rowcount
        return await anyio.to_thread.run_sync(run)

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        def run() -> list[tuple]:
            return self.conn.execute(sql, args).fetchall()
        return await anyio.to_thread.run_sync(run)


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str, secret_key: str):
        super().__init__(url, secret_key)
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            return conn
        self._conn = await anyio.to_thread.run_sync(connect)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await anyio.to_thread.run_sync(conn.close)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        if self._conn is None:
            raise RuntimeError("store is not open")
        conn = self._conn
        async with self._lock:
            await anyio.to_thread.run_sync(conn.execute, "BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(conn.execute, "ROLLBACK")
                raise
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.execute, "COMMIT")
