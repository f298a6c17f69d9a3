"""The control plane store: one implementation of the logic over two SQL engines.

``SqliteStore`` (embedded, one gateway) and ``PostgresStore`` (several replicas) differ only
in how a transaction runs a statement; every query below is written once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from ogelkit.control.records import (
    DATABASE_STATES,
    REAL_USAGE_FIELDS,
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


class StoreUnavailable(ConnectionError):
    """The control plane cannot be reached right now (not a bad request: retry later)."""


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
_DB_INSERT_COLS = "tenant, name, kind, backend, upstream, state, created_at"
_DB_COLS = (_DB_INSERT_COLS + ", last_active_at, last_cold_start_at, last_cold_start_seconds, "
            "state_changed_at, requested_state")
_LIFE_COLS = ("tenant, name, backend, state, last_active_at, state_changed_at, requested_state, "
              "last_cold_start_at, last_cold_start_seconds")
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

    def tx(self) -> AbstractAsyncContextManager[Tx]:
        """A read-write transaction: committed when the block ends, rolled back when it
        raises or is cancelled (at any await inside it)."""
        raise NotImplementedError

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction that only reads: on SQLite it takes no write lock, so logins'
        lookups never queue behind (or hold off) another process's write, the CLI's."""
        return self.tx()

    async def ping(self) -> None:
        async with self.read() as tx:
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
        async with self.read() as tx:
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
        async with self.read() as tx:
            row = await tx.fetchone(f"SELECT {_TENANT_COLS} FROM tenants WHERE slug = ?", slug)
        return TenantRecord(*row) if row else None

    async def require_tenant(self, slug: str) -> TenantRecord:
        tenant = await self.get_tenant(slug)
        if tenant is None:
            raise NotFound(f'no tenant "{slug}"')
        return tenant

    async def list_tenants(self) -> list[TenantRecord]:
        async with self.read() as tx:
            rows = await tx.fetch(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY slug")
        return [TenantRecord(*r) for r in rows]

    async def tenants_changed_since(self, ts: float) -> list[TenantRecord]:
        async with self.read() as tx:
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
        async with self.read() as tx:
            row = await tx.fetchone("SELECT verifier FROM credentials WHERE tenant = ?", slug)
        return row[0] if row else None

    # -- databases -----------------------------------------------------------------------------
    def _db(self, row: Sequence[Any]) -> DatabaseRecord:
        tenant, name, kind, backend, upstream, state, created, *life = row
        try:
            details = self.box.open(upstream)
        except SecretKeyError as exc:
            raise StoreError(f"database {tenant}/{name}: {exc}") from exc
        active, cold_at, cold_s, changed, requested = life
        return DatabaseRecord(tenant, name, kind, backend, details, state, created,
                              float(active or 0), cold_at, cold_s, float(changed or 0), requested)

    async def put_database(self, db: DatabaseRecord) -> DatabaseRecord:
        """Insert or update (idempotent provisioning writes it again with fresh details)."""
        created = db.created_at or time.time()
        async with self.tx() as tx:
            await tx.execute(
                f"INSERT INTO databases ({_DB_INSERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, "
                "backend = excluded.backend, upstream = excluded.upstream",
                db.tenant, db.name, db.kind, db.backend, self.box.seal(db.upstream), db.state,
                created)
        return attrs.evolve(db, created_at=created)

    async def get_database(self, tenant: str, name: str) -> DatabaseRecord | None:
        async with self.read() as tx:
            row = await tx.fetchone(f"SELECT {_DB_COLS} FROM databases WHERE tenant = ? AND name = ?",
                                    tenant, name)
        return self._db(row) if row else None

    async def list_databases(self, tenant: str | None = None) -> list[DatabaseRecord]:
        async with self.read() as tx:
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
            await tx.execute("UPDATE databases SET state = ?, state_changed_at = ? "
                             "WHERE tenant = ? AND name = ?", state, time.time(), tenant, name)

    # -- lifecycle (DLS) -----------------------------------------------------------------------
    async def database_states(self) -> list[LifeRow]:
        """Every database's lifecycle columns (no upstream details to decrypt): what the
        lifecycle scheduler reads on every tick."""
        async with self.read() as tx:
            rows = await tx.fetch(f"SELECT {_LIFE_COLS} FROM databases")
        return [LifeRow(*r) for r in rows]

    async def transition(self, tenant: str, name: str, state: str, *,
                         expect: Sequence[str] | None = None, quiet_since: float | None = None,
                         cold_start_seconds: float | None = None,
                         clear_request: bool = False) -> bool:
        """Move a database to ``state``, only if its state is one of ``expect`` and (with
        ``quiet_since``) no client was seen after that time: a compare-and-set, so two
        replicas (or a replica and a client arriving elsewhere) cannot both win. A finished
        wake passes ``cold_start_seconds``. Returns whether the row changed."""
        if state not in DATABASE_STATES:
            raise StoreError(f"state must be one of {', '.join(DATABASE_STATES)}")
        now = time.time()
        sets = ["state = ?", "state_changed_at = ?"]
        args: list[Any] = [state, now]
        if cold_start_seconds is not None:
            sets += ["last_cold_start_at = ?", "last_cold_start_seconds = ?"]
            args += [now, cold_start_seconds]
        if clear_request:
            sets.append("requested_state = NULL")
        sql = f"UPDATE databases SET {', '.join(sets)} WHERE tenant = ? AND name = ?"
        args += [tenant, name]
        if expect is not None:
            sql += f" AND state IN ({', '.join('?' for _ in expect)})"
            args += list(expect)
        if quiet_since is not None:
            sql += " AND last_active_at <= ?"
            args.append(quiet_since)
        async with self.tx() as tx:
            return bool(await tx.execute(sql, *args))

    async def touch_databases(self, seen: Iterable[tuple[str, str, float]]) -> None:
        """Record client activity: ``(tenant, name, when)``; the latest time wins."""
        seen = list(seen)
        if not seen:
            return
        greatest = DIALECTS[self.dialect]["greatest"]
        async with self.tx() as tx:
            for tenant, name, when in seen:
                await tx.execute(f"UPDATE databases SET last_active_at = {greatest}(last_active_at, ?) "
                                 "WHERE tenant = ? AND name = ?", when, tenant, name)

    async def request_database_state(self, tenant: str, name: str, state: str | None) -> None:
        """Ask the gateway running the scheduler to sleep (``"asleep"``) or wake
        (``"active"``) a database; None withdraws the request."""
        if state not in (None, "asleep", "active"):
            raise StoreError('a requested state is "asleep" or "active"')
        async with self.tx() as tx:
            if not await tx.execute("UPDATE databases SET requested_state = ? "
                                    "WHERE tenant = ? AND name = ?", state, tenant, name):
                raise NotFound(f'tenant "{tenant}" has no database "{name}"')

    async def lifecycle_heartbeat(self, gateway: str, *, stopping: bool = False) -> None:
        """The scheduler of ``gateway`` is running (one row; the latest writer wins), or,
        with ``stopping``, has stopped (so the CLI knows at once that nobody applies
        requests)."""
        async with self.tx() as tx:
            await tx.execute("INSERT INTO lifecycle_leader (id, gateway, heartbeat_at) "
                             "VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                             "gateway = excluded.gateway, heartbeat_at = excluded.heartbeat_at",
                             gateway, 0.0 if stopping else time.time())

    async def lifecycle_leader(self) -> tuple[str, float] | None:
        """``(gateway id, last heartbeat)`` of the last scheduler, or None if none ever ran."""
        async with self.read() as tx:
            row = await tx.fetchone("SELECT gateway, heartbeat_at FROM lifecycle_leader "
                                    "WHERE id = 1")
        return (str(row[0]), float(row[1])) if row else None

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
        async with self.read() as tx:
            rows = await tx.fetch(sql, *args)
        names = [f for f in USAGE_FIELDS if f != "storage_bytes"] + ["storage_bytes"]
        return [UsageTotals(tenant, r[0], {n: float(v or 0) for n, v in zip(names, r[1:], strict=True)})
                for r in rows]

    async def count_usage_events(self, tenant: str | None = None) -> int:
        async with self.read() as tx:
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
        async with self.read() as tx:
            rows = await tx.fetch(sql + " ORDER BY subject", *args)
        return [LayerReport(r[0], r[1], json.loads(r[2]), r[3], float(r[4])) for r in rows]


@attrs.frozen
class LifeRow:
    """A database's lifecycle columns (``Store.database_states``)."""

    tenant: str
    name: str
    backend: str
    state: str
    last_active_at: float
    state_changed_at: float
    requested_state: str | None
    last_cold_start_at: float | None
    last_cold_start_seconds: float | None


def _num(field: str, value: float) -> float | int:
    if field in REAL_USAGE_FIELDS:
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
