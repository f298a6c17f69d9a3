"""The control plane store: one implementation of the logic over two SQL engines.

``SqliteStore`` (embedded, one gateway) and ``PostgresStore`` (several replicas) differ only
in how a transaction runs a statement; every query below is written once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ogelkit.control.records import (
    DATABASE_STATES,
    TENANT_STATUSES,
    USAGE_FIELDS,
    DatabaseRecord,
    LayerReport,
    TenantRecord,
    UsageEvent,
    UsageTotals,
)
from ogelkit.control.schema import DIALECTS, MIGRATIONS, render
from ogelkit.control.secrets import SecretBox, SecretKeyError


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Tx:
    """A transaction handle: ``execute`` returns the affected row count, ``fetch`` rows."""

    async def execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        raise NotImplementedError

    async def fetchone(self, sql: str, *args: Any) -> tuple | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None


_TENANT_COLS = "slug, tier, status, created_at, updated_at"
_DB_COLS = "tenant, name, kind, backend, upstream, state, created_at"
_ROLLUP_SUM = ", ".join(f"SUM({f})" for f in USAGE_FIELDS if f != "storage_bytes")


class Store:
    dialect = "sqlite"

    def __init__(self, url: str, secret_key: str):
        self.url = url
        self.box = SecretBox(secret_key)

    # -- engine --------------------------------------------------------------------------------
    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def ping(self) -> None:
        async with self.tx() as tx:
            await tx.fetch("SELECT 1")

    # -- migrations ----------------------------------------------------------------------------
    async def _lock_for_migration(self, tx: Tx) -> None:
        """Serialise concurrent migrators (several replicas starting at once)."""

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        applied: list[int] = []
        async with self.tx() as tx:
            await self._lock_for_migration(tx)
            await tx.execute(render(
                "CREATE TABLE IF NOT EXISTS ogelkit_schema "
                "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at {real} NOT NULL)",
                self.dialect))
            done = {r[0] for r in await tx.fetch("SELECT version FROM ogelkit_schema")}
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    await tx.execute(render(statement, self.dialect))
                await tx.execute("INSERT INTO ogelkit_schema (version, description, applied_at) "
                                 "VALUES (?, ?, ?)", version, description, time.time())
                applied.append(version)
        return applied

    async def schema_version(self) -> int:
        async with self.tx() as tx:
            row = await tx.fetchone("SELECT MAX(version) FROM ogelkit_schema")
        return int(row[0] or 0) if row else 0

    # -- tenants -------------------------------------------------------------------------------
    async def create_tenant(self, slug: str, tier: str) -> TenantRecord:
        now = time.time()
        async with self.tx() as tx:
            if await tx.fetchone("SELECT 1 FROM tenants WHERE slug = ?", slug):
                raise AlreadyExists(f'tenant "{slug}" already exists')
            await tx.execute(f"INSERT INTO tenants ({_TENANT_COLS}) VALUES (?, ?, 'active', ?, ?)",
                             slug, tier, now, now)
        return TenantRecord(slug, tier, "active", now, now)

    async def get_tenant(self, slug: str) -> TenantRecord | None:
        async with self.tx() as tx:
            row = await tx.fetchone(f"SELECT {_TENANT_COLS} FROM tenants WHERE slug = ?", slug)
        return TenantRecord(*row) if row else None

    async def require_tenant(self, slug: str) -> TenantRecord:
        tenant = await self.get_tenant(slug)
        if tenant is None:
            raise NotFound(f'no tenant "{slug}"')
        return tenant

    async def list_tenants(self) -> list[TenantRecord]:
        async with self.tx() as tx:
            rows = await tx.fetch(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY slug")
        return [TenantRecord(*r) for r in rows]

    async def tenants_changed_since(self, ts: float) -> list[TenantRecord]:
        async with self.tx() as tx:
            rows = await tx.fetch(
                f"SELECT {_TENANT_COLS} FROM tenants WHERE updated_at > ? ORDER BY updated_at", ts)
        return [TenantRecord(*r) for r in rows]

    async def update_tenant(self, slug: str, *, tier: str | None = None,
                            status: str | None = None) -> TenantRecord:
        if status is not None and status not in TENANT_STATUSES:
            raise StoreError(f"status must be one of {', '.join(TENANT_STATUSES)}")
        # A strictly increasing timestamp, so pollers with a "> last seen" cursor never miss it.
        async with self.tx() as tx:
            row = await tx.fetchone(f"SELECT {_TENANT_COLS} FROM tenants WHERE slug = ?", slug)
            if row is None:
                raise NotFound(f'no tenant "{slug}"')
            current = TenantRecord(*row)
            now = max(time.time(), current.updated_at + 1e-6)
            new = TenantRecord(slug, tier or current.tier, status or current.status,
                               current.created_at, now)
            await tx.execute("UPDATE tenants SET tier = ?, status = ?, updated_at = ? WHERE slug = ?",
                             new.tier, new.status, now, slug)
        return new

    async def delete_tenant(self, slug: str) -> None:
        async with self.tx() as tx:
            if not await tx.execute("DELETE FROM tenants WHERE slug = ?", slug):
                raise NotFound(f'no tenant "{slug}"')

    # -- credentials ---------------------------------------------------------------------------
    async def set_verifier(self, slug: str, verifier: str) -> None:
        if not verifier.startswith("SCRAM-SHA-256$"):
            raise StoreError("only SCRAM-SHA-256 verifiers are stored, never passwords")
        now = time.time()
        async with self.tx() as tx:
            if not await tx.fetchone("SELECT 1 FROM tenants WHERE slug = ?", slug):
                raise NotFound(f'no tenant "{slug}"')
            await tx.execute(
                "INSERT INTO credentials (tenant, verifier, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET verifier = excluded.verifier, "
                "updated_at = excluded.updated_at", slug, verifier, now)
            # Credential changes count as tenant changes, so gateway caches refresh.
            await tx.execute("UPDATE tenants SET updated_at = ? WHERE slug = ?", now, slug)

    async def get_verifier(self, slug: str) -> str | None:
        async with self.tx() as tx:
            row = await tx.fetchone("SELECT verifier FROM credentials WHERE tenant = ?", slug)
        return row[0] if row else None

    # -- databases -----------------------------------------------------------------------------
    def _db(self, row: Sequence[Any]) -> DatabaseRecord:
        tenant, name, kind, backend, upstream, state, created = row
        try:
            details = self.box.open(upstream)
        except SecretKeyError as exc:
            raise StoreError(f"database {tenant}/{name}: {exc}") from exc
        return DatabaseRecord(tenant, name, kind, backend, details, state, created)

    async def put_database(self, db: DatabaseRecord) -> DatabaseRecord:
        """Insert or update (idempotent provisioning writes it again with fresh details)."""
        created = db.created_at or time.time()
        async with self.tx() as tx:
            await tx.execute(
                f"INSERT INTO databases ({_DB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, "
                "backend = excluded.backend, upstream = excluded.upstream",
                db.tenant, db.name, db.kind, db.backend, self.box.seal(db.upstream), db.state,
                created)
        return DatabaseRecord(db.tenant, db.name, db.kind, db.backend, db.upstream, db.state,
                              created)

    async def get_database(self, tenant: str, name: str) -> DatabaseRecord | None:
        async with self.tx() as tx:
            row = await tx.fetchone(f"SELECT {_DB_COLS} FROM databases WHERE tenant = ? AND name = ?",
                                    tenant, name)
        return self._db(row) if row else None

    async def list_databases(self, tenant: str | None = None) -> list[DatabaseRecord]:
        async with self.tx() as tx:
            if tenant is None:
                rows = await tx.fetch(f"SELECT {_DB_COLS} FROM databases ORDER BY tenant, name")
            else:
                rows = await tx.fetch(
                    f"SELECT {_DB_COLS} FROM databases WHERE tenant = ? ORDER BY name", tenant)
        return [self._db(r) for r in rows]

    async def delete_database(self, tenant: str, name: str) -> None:
        async with self.tx() as tx:
            if not await tx.execute("DELETE FROM databases WHERE tenant = ? AND name = ?",
                                    tenant, name):
                raise NotFound(f'tenant "{tenant}" has no database "{name}"')

    async def set_database_state(self, tenant: str, name: str, state: str) -> None:
        if state not in DATABASE_STATES:
            raise StoreError(f"state must be one of {', '.join(DATABASE_STATES)}")
        async with self.tx() as tx:
            await tx.execute("UPDATE databases SET state = ? WHERE tenant = ? AND name = ?",
                             state, tenant, name)

    # -- usage ---------------------------------------------------------------------------------
    async def record_usage(self, events: Iterable[UsageEvent]) -> int:
        """Store a batch at least once, exactly once in effect: duplicates (same id) are
        ignored and only newly stored events are added to the hourly rollups.
        Returns how many events were new."""
        events = list(events)
        if not events:
            return 0
        cols = ", ".join(USAGE_FIELDS)
        marks = ", ".join("?" for _ in USAGE_FIELDS)
        greatest = DIALECTS[self.dialect]["greatest"]
        updates = ", ".join(
            f"storage_bytes = {greatest}(usage_rollups.storage_bytes, excluded.storage_bytes)"
            if f == "storage_bytes" else f"{f} = usage_rollups.{f} + excluded.{f}"
            for f in USAGE_FIELDS
        )
        new = 0
        async with self.tx() as tx:
            rollups: dict[tuple[str, str, float], dict[str, float]] = {}
            for ev in events:
                values = [getattr(ev, f) for f in USAGE_FIELDS]
                inserted = await tx.execute(
                    f"INSERT INTO usage_events (id, ts, tenant, dbname, kind, gateway, {cols}) "
                    f"VALUES (?, ?, ?, ?, ?, ?, {marks}) ON CONFLICT (id) DO NOTHING",
                    ev.id, ev.ts, ev.tenant, ev.database, ev.kind, ev.gateway, *values)
                if not inserted:
                    continue
                new += 1
                hour = math.floor(ev.ts / 3600) * 3600.0
                acc = rollups.setdefault((ev.tenant, ev.database, hour), dict.fromkeys(USAGE_FIELDS, 0))
                for f, v in zip(USAGE_FIELDS, values, strict=True):
                    acc[f] = max(acc[f], v) if f == "storage_bytes" else acc[f] + v
            for (tenant, dbname, hour), acc in rollups.items():
                await tx.execute(
                    f"INSERT INTO usage_rollups (tenant, dbname, hour, {cols}) "
                    f"VALUES (?, ?, ?, {marks}) ON CONFLICT (tenant, dbname, hour) DO UPDATE SET {updates}",
                    tenant, dbname, hour, *[_num(f, acc[f]) for f in USAGE_FIELDS])
        return new

    async def usage_totals(self, tenant: str, start: float, end: float,
                           database: str | None = None) -> list[UsageTotals]:
        """Per-database sums over ``[start, end)`` from the hourly rollups; storage as max."""
        sql = (f"SELECT dbname, {_ROLLUP_SUM}, MAX(storage_bytes) FROM usage_rollups "
               "WHERE tenant = ? AND hour >= ? AND hour < ?")
        args: list[Any] = [tenant, start, end]
        if database is not None:
            sql += " AND dbname = ?"
            args.append(database)
        sql += " GROUP BY dbname ORDER BY dbname"
        async with self.tx() as tx:
            rows = await tx.fetch(sql, *args)
        names = [f for f in USAGE_FIELDS if f != "storage_bytes"] + ["storage_bytes"]
        return [UsageTotals(tenant, r[0], {n: float(v or 0) for n, v in zip(names, r[1:], strict=True)})
                for r in rows]

    async def count_usage_events(self, tenant: str | None = None) -> int:
        async with self.tx() as tx:
            if tenant is None:
                row = await tx.fetchone("SELECT COUNT(*) FROM usage_events")
            else:
                row = await tx.fetchone("SELECT COUNT(*) FROM usage_events WHERE tenant = ?", tenant)
        return int(row[0]) if row else 0

    # -- layer reports -------------------------------------------------------------------------
    async def put_layer_report(self, report: LayerReport) -> None:
        """Store ``report`` as the latest for its (layer, subject), replacing the previous one.
        ``body`` must be JSON-serialisable."""
        body = json.dumps(report.body, sort_keys=True)
        async with self.tx() as tx:
            await tx.execute(
                "INSERT INTO layer_reports (layer, subject, gateway, updated_at, body) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (layer, subject) DO UPDATE SET "
                "gateway = excluded.gateway, updated_at = excluded.updated_at, "
                "body = excluded.body",
                report.layer, report.subject, report.gateway,
                report.updated_at or time.time(), body)

    async def layer_reports(self, layer: str, subject: str | None = None) -> list[LayerReport]:
        """The latest reports of ``layer`` (one subject, or all of them by subject)."""
        sql = "SELECT layer, subject, body, gateway, updated_at FROM layer_reports WHERE layer = ?"
        args: list[Any] = [layer]
        if subject is not None:
            sql += " AND subject = ?"
            args.append(subject)
        async with self.tx() as tx:
            rows = await tx.fetch(sql + " ORDER BY subject", *args)
        return [LayerReport(r[0], r[1], json.loads(r[2]), r[3], float(r[4])) for r in rows]


def _num(field: str, value: float) -> float | int:
    if field in ("duration", "connection_seconds", "vcpu_seconds", "gb_seconds"):
        return float(value)
    return int(value)


def open_store(url: str, secret_key: str) -> Store:
    """A store for ``url`` (not yet opened)."""
    if url.startswith("sqlite:"):
        from ogelkit.control.sqlite import SqliteStore
        return SqliteStore(url, secret_key)
    if url.startswith(("postgresql://", "postgres://")):
        from ogelkit.control.postgres import PostgresStore
        return PostgresStore(url, secret_key)
    raise StoreError(f"unsupported control plane URL {url!r}")
