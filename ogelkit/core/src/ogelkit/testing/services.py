"""Where the real servers of the test suite listen (``scripts/services.sh`` starts them).

Defaults match the script; each can be overridden with the environment variable shown, so
a plugin's tests run against any PostgreSQL, Redis or MongoDB-compatible server.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

PG_DSN_ENV = "OGELKIT_TEST_PG_DSN"
REDIS_URL_ENV = "OGELKIT_TEST_REDIS_URL"
FERRETDB_URL_ENV = "OGELKIT_TEST_FERRETDB_URL"
MONGODB_URL_ENV = "OGELKIT_TEST_MONGODB_URL"  # optional: a real MongoDB


def pg_dsn() -> str:
    """Superuser DSN of the test PostgreSQL 15."""
    return os.environ.get(PG_DSN_ENV, "postgresql://postgres:postgres@127.0.0.1:55432/postgres")


def redis_url() -> str:
    """URL of the test Redis 7 (database 0; tests must only touch keys they create)."""
    return os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:56379/0")


def ferretdb_url() -> str:
    """URL of the test FerretDB 1.24 (MongoDB wire protocol)."""
    return os.environ.get(FERRETDB_URL_ENV, "mongodb://127.0.0.1:57017/")


def mongodb_url() -> str | None:
    """URL of a real MongoDB when one is provided; None otherwise."""
    return os.environ.get(MONGODB_URL_ENV) or None


def pg_admin(sql: str) -> None:
    """Run one statement as the test server's superuser.

    On a thread of its own, so that sync tests and async fixtures (inside a running event
    loop) can both call it."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pg_dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextmanager
def scratch_pg_database(prefix: str = "ogelkit_cp") -> Iterator[str]:
    """A throwaway database on the test PostgreSQL (for a control plane, say): yields its
    URL, then drops it, with any sessions still on it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_dsn().rsplit('/', 1)[0]}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
