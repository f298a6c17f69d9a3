"""The core's FrontDoorContract on the Postgres door, with asyncpg and psycopg as clients."""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable

import asyncpg
import psycopg
from ogelkit_postgres.errors import reject_error
from ogelkit_postgres.testing import PREFIX

from ogelkit import Reject
from ogelkit.testing.frontdoor import FrontDoorContract
from ogelkit.testing.services import pg_dsn


class TestPostgresDoorContract(FrontDoorContract):
    backend = (f'type = "postgres"\ndsn = "{pg_dsn()}"\npool_mode = "transaction"\n'
               f'name_prefix = "{PREFIX}c_"')
    protocol = "postgres"
    shutdown_marker = "shutting down"

    @staticmethod
    def encode_reject(reject: Reject) -> bytes:
        return reject_error(reject)

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        async def go() -> str:
            try:
                conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user,
                                             password=password, database=database, ssl=False,
                                             timeout=20)
            except asyncpg.PostgresError as exc:
                return f"{exc.sqlstate} {exc}"
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
            return "ok"
        return asyncio.run(go())

    def hold_idle(self, port: int, user: str, password: str,
                  database: str) -> Callable[[], str]:
        conn = psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                               dbname=database, sslmode="disable", autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)

        def told() -> str:
            try:
                select.select([conn.pgconn.socket], [], [], 10)  # the gateway's FATAL
                conn.execute("SELECT 1")
                return "ok"
            except psycopg.Error as exc:
                return f"{exc.sqlstate} {exc}"
            finally:
                conn.close()
        return told
