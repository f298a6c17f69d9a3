"""PostgreSQL control plane: shared by several gateway replicas (asyncpg pool)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ogelkit.control.store import Store, Tx

_MARK = re.compile(r"\?")
_MIGRATION_LOCK = 0x06E1_C0DE  # pg_advisory_xact_lock key: one migrator at a time


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


class _PgTx(Tx):
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self.conn.execute(_numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        return [tuple(r) for r in await self.conn.fetch(_numbered(sql), *args)]


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, secret_key: str, *, min_size: int = 1, max_size: int = 5):
        super().__init__(url, secret_key)
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self._sizes[0],
                                               max_size=self._sizes[1], timeout=10,
                                               command_timeout=30)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise RuntimeError("store is not open")
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def _lock_for_migration(self, tx: Tx) -> None:
        await tx.fetch("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
