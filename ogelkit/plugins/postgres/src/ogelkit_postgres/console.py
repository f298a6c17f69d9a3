"""Studio's SQL console: one statement run upstream as the tenant database's own role.

The gateway's layers admitted it already (the core's console session); here it runs on a
connection of its own (not a pool's: a console statement may change session state), with
the session layer's settings, and answers at most ``MAX_ROWS`` rows as JSON-able values.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Session
    from ogelkit_postgres.backend import PostgresBackend

MAX_ROWS = 1000


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.date | datetime.time | datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


async def run_sql(backend: PostgresBackend, db: DatabaseRecord, sql: str,
                  session: Session) -> dict[str, Any]:
    host, port, user, password, dbname = await backend.upstream_target(db)
    settings = {"application_name": "o7s:studio", **backend.upstream_startup(db)}
    conn = await asyncpg.connect(host=host, port=port, user=user, password=password,
                                 database=dbname, timeout=backend.config.connect_timeout,
                                 statement_cache_size=0, ssl=backend.upstream_tls(db) or False,
                                 server_settings=settings)
    try:
        for name, value in session.settings.items():
            await conn.execute("SELECT set_config($1, $2, false)", name, value)
        try:
            stmt = await conn.prepare(sql)
            attrs = stmt.get_attributes()
            if attrs:
                cursor_rows = []
                async with conn.transaction(readonly=False):
                    async for row in stmt.cursor():
                        cursor_rows.append([_json_value(v) for v in row.values()])
                        if len(cursor_rows) >= MAX_ROWS:
                            break
                return {"columns": [a.name for a in attrs], "rows": cursor_rows,
                        "command": stmt.get_statusmsg() or f"SELECT {len(cursor_rows)}",
                        "truncated": len(cursor_rows) >= MAX_ROWS}
            status = await conn.execute(sql)
            return {"columns": [], "rows": [], "command": status, "truncated": False}
        except asyncpg.PostgresError as exc:
            code = getattr(exc, "sqlstate", None) or ""
            raise ValueError(f"{code}: {exc}" if code else str(exc)) from None
    finally:
        await conn.close(timeout=2)
