"""``type = "postgres"``: tenant databases on a shared PostgreSQL server.

The backend owns the pools (one per tenant database), provisions roles and databases, and
offers the layers' capabilities: ``estimate_cost`` (EXPLAIN with the tenant's own role),
``session_settings`` (per-tier GUCs the pool applies at every checkout), ``storage_bytes``,
``sleep``/``wake``. Cancelling an operation is the front door's ``op.canceller``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import asyncpg

import ogelkit
from ogelkit_postgres import provision as prov
from ogelkit_postgres.options import PostgresOptions
from ogelkit_postgres.pool import Pool
from ogelkit_postgres.sql import EXPLAINABLE, normalize, verb_of
from ogelkit_postgres.upstream import ServerConnection, open_server

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Operation, Session, TenantRecord, Tier

log = logging.getLogger("ogelkit.postgres")

_PARAM = re.compile(r"\$(\d+)")
_MAINTAIN_EVERY = 1.0
_EXPLAIN_IDLE = 60.0
#: Statements longer than this are keyed by their exact text, not normalised: tokenising
#: costs ~0.3 us per token on the event loop (a 900 kB statement of literals took 100+ ms,
#: stalling every tenant), and statements that long rarely repeat with other constants.
NORMALIZE_MAX = 64 * 1024


def parse_dsn(dsn: str) -> dict[str, Any]:
    """host, port, user, password, database of a URL or key=value DSN."""
    if "://" in dsn:
        u = urlsplit(dsn)
        return {"host": u.hostname or "localhost", "port": u.port or 5432,
                "user": unquote(u.username or "postgres"),
                "password": unquote(u.password) if u.password else None,
                "database": unquote(u.path.lstrip("/")) or "postgres"}
    out: dict[str, Any] = {"host": "localhost", "port": 5432, "user": "postgres",
                           "password": None, "database": "postgres"}
    for part in dsn.split():
        key, _, value = part.partition("=")
        key = {"dbname": "database"}.get(key, key)
        if key in out:
            out[key] = int(value) if key == "port" else value.strip("'")
    return out


class _ExplainConn:
    __slots__ = ("conn", "last_used", "lock")

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()


class PostgresBackend(ogelkit.Backend):
    type_name = "postgres"
    Config = PostgresOptions
    protocol = "postgres"

    def __init__(self, config: PostgresOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.config: PostgresOptions = config
        self.admin = parse_dsn(config.dsn)
        self.pools: dict[tuple[str, str], Pool] = {}
        self._admin_pool: asyncpg.Pool | None = None
        self._explain: dict[tuple[str, str], _ExplainConn] = {}
        # (tier name, tenant) -> (the Tier object it was computed from, settings): a config
        # reload brings new Tier objects, which recompute.
        self._settings_cache: dict[tuple[str, str], tuple[Tier, dict[str, str]]] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._upstream_errors = context.metrics.upstream_errors
        gauge = context.metrics.upstream_connections
        gauge.labels(name, "idle").set_function(
            lambda: sum(len(p.idle) for p in self.pools.values()))
        gauge.labels(name, "active").set_function(
            lambda: sum(len(p.members) - len(p.idle) for p in self.pools.values()))

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        for entry in self._explain.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.close(), 2)
        self._explain.clear()
        if self._admin_pool is not None:
            pool, self._admin_pool = self._admin_pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)

    async def check(self) -> None:
        async with self._admin() as conn:
            await conn.fetchval("SELECT 1")

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(_MAINTAIN_EVERY)
            now = time.monotonic()
            for pool in list(self.pools.values()):
                try:
                    pool.maintain(now)
                except Exception:
                    log.exception("pool maintenance failed for %r", pool)
            for key, entry in list(self._explain.items()):
                if now - entry.last_used > _EXPLAIN_IDLE and not entry.lock.locked():
                    del self._explain[key]
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(entry.conn.close(), 2)

    def _admin(self):
        return _AdminConn(self)

    async def _admin_pool_get(self) -> asyncpg.Pool:
        if self._admin_pool is None:
            a = self.admin
            self._admin_pool = await asyncpg.create_pool(
                host=a["host"], port=a["port"], user=a["user"], password=a["password"],
                database=a["database"], min_size=0, max_size=2,
                timeout=self.config.connect_timeout, max_inactive_connection_lifetime=60)
        return self._admin_pool

    # -- upstream --------------------------------------------------------------------------
    def upstream_address(self) -> tuple[str, int]:
        return (self.config.upstream_host or self.admin["host"],
                self.config.upstream_port or self.admin["port"])

    async def upstream_target(self, db: DatabaseRecord) -> tuple[str, int, str, str, str]:
        """Where and as whom a pool connects for ``db`` (a Neon backend wakes compute here)."""
        host, port = self.upstream_address()
        up = db.upstream
        return host, port, up["role"], up["password"], up["dbname"]

    def upstream_startup(self, db: DatabaseRecord) -> dict[str, str]:
        """Extra startup parameters of ``db``'s upstream connections (Neon's cloud adds
        ``options=endpoint=<id>``); the pool's and the planner's connections alike."""
        return {}

    def upstream_tls(self, db: DatabaseRecord) -> ssl.SSLContext | None:
        """TLS for ``db``'s upstream connections, or None for plain TCP (the shared server
        and Neon-local computes are on loopback or a private network)."""
        return None

    async def open_upstream(self, pool: Pool, host: str, port: int, user: str, password: str,
                            dbname: str) -> ServerConnection:
        """Open and log in one server connection of ``pool``."""
        return await open_server(pool, host, port, user, password, dbname,
                                 self.config.connect_timeout,
                                 startup_extra=self.upstream_startup(pool.db),
                                 tls=self.upstream_tls(pool.db))

    def pool_for(self, db: DatabaseRecord) -> Pool:
        key = (db.tenant, db.name)
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            pool = self.pools[key] = Pool(self, db)
        elif pool.db.upstream != db.upstream:
            pool.db = db  # reprovisioned: new connections use the new credentials
        return pool

    def count_upstream_error(self, kind: str) -> None:
        self._upstream_errors.labels(self.name, kind).inc()

    # -- provisioning ----------------------------------------------------------------------
    def names(self, tenant: str, name: str) -> tuple[str, str]:
        """Upstream role and database of ``tenant``'s database ``name`` when provisioned now
        (a provisioned database's own names are in its ``upstream`` record)."""
        prefix = self.config.name_prefix
        if self.config.upstream_names == "readable":
            return prov.role_name(prefix, tenant), prov.database_name(prefix, tenant, name)
        key = self.context.config.control.secret_key
        return (prov.opaque_role_name(prefix, key, tenant),
                prov.opaque_database_name(prefix, key, tenant, name))

    async def _known_password(self, tenant: str, role: str) -> str | None:
        """The role's password from an earlier provisioning, so a second database of the
        same tenant does not invalidate the first one's stored credentials: whichever of this
        server's backends provisioned it (the role name does not depend on the backend, so
        a session-mode and a transaction-mode backend on one server share it)."""
        here = self.upstream_address()
        try:
            for db in await self.context.store.list_databases(tenant):
                up = db.upstream
                if up.get("role") == role and up.get("password") \
                        and (up.get("host"), up.get("port")) == here:
                    return up["password"]
        except Exception as exc:
            log.warning("could not read earlier credentials of %s: %s", tenant, exc)
        return None

    async def provision(self, tenant: TenantRecord, name: str, tier: Tier) -> dict[str, Any]:
        role, dbname = self.names(tenant.slug, name)
        password = await self._known_password(tenant.slug, role) or prov.new_password()
        limit = prov.connection_limit(tier.connections, self.config.role_connection_reserve)
        async with self._admin() as conn:
            await prov.ensure_role(conn, role, password, limit)
            await prov.ensure_database(conn, dbname, role)
        host, port = self.upstream_address()
        log.info("provisioned postgres database", extra={
            "tenant": tenant.slug, "database": name, "upstream_database": dbname, "role": role})
        return {"role": role, "password": password, "dbname": dbname, "host": host, "port": port}

    async def deprovision(self, tenant: TenantRecord, db: DatabaseRecord) -> None:
        role, dbname = self.names(tenant.slug, db.name)
        role = db.upstream.get("role", role)
        dbname = db.upstream.get("dbname", dbname)
        pool = self.pools.pop((db.tenant, db.name), None)
        if pool is not None:
            pool.close()
        explain = self._explain.pop((db.tenant, db.name), None)
        if explain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(explain.conn.close(), 2)
        async with self._admin() as conn:
            await prov.drop_database(conn, dbname, role)
        log.info("dropped postgres database", extra={
            "tenant": tenant.slug, "database": db.name, "upstream_database": dbname})

    def connection_string(self, tenant: TenantRecord, db: DatabaseRecord, password: str | None,
                          host: str, port: int) -> str:
        secret = quote(password, safe="") if password else "<password>"
        return f"postgresql://{quote(tenant.slug, safe='')}:{secret}@{host}:{port}/" \
               f"{quote(db.name, safe='')}"

    async def on_tier_change(self, tenant: TenantRecord, db: DatabaseRecord, tier: Tier) -> None:
        pool = self.pools.get((db.tenant, db.name))
        if pool is not None:
            pool.set_tier(tier)
        limit = prov.connection_limit(tier.connections, self.config.role_connection_reserve)
        async with self._admin() as conn:
            await prov.set_connection_limit(conn, db.upstream.get("role") or
                                            self.names(tenant.slug, db.name)[0], limit)

    # -- capabilities ----------------------------------------------------------------------
    def session_settings(self, session: Session) -> dict[str, str]:
        """Per-tier settings, one shared (read-only) dict per tier and tenant so the pool's
        "already applied?" check is usually an identity test. ``application_name`` is left
        to the client (see ``docs/plugins/postgres.md``, "What other tenants see")."""
        tier = session.tier
        if tier is None:
            return {}
        key = (tier.name, session.tenant_slug or "")
        cached = self._settings_cache.get(key)
        if cached is not None and cached[0] is tier:
            return cached[1]
        out: dict[str, str] = {}
        if tier.work_mem is not None:
            out["work_mem"] = f"{max(64, tier.work_mem // 1024)}kB"
        out["statement_timeout"] = _ms(tier.statement_timeout)
        out["idle_in_transaction_session_timeout"] = _ms(tier.idle_in_transaction_timeout)
        if tier.parallel_workers is not None:
            out["max_parallel_workers_per_gather"] = str(tier.parallel_workers)
        # No application_name: upstream it is the client's own (issue 16: a tier or tenant
        # tag there is visible to every tenant in pg_stat_activity).
        if len(self._settings_cache) > 10_000:
            self._settings_cache.clear()
        self._settings_cache[key] = (tier, out)
        return out

    def cost_key(self, op: Operation) -> Hashable | None:
        if op.text is None or op.name not in EXPLAINABLE:
            return None
        text = op.text
        if len(text) > NORMALIZE_MAX:  # hash(): SipHash, keyed per process; cached on text
            return (op.session.tenant_slug, op.session.database, "#", len(text), hash(text))
        return (op.session.tenant_slug, op.session.database, normalize(text))

    async def estimate_cost(self, op: Operation) -> float | None:
        db = op.session.db
        text = op.text
        if db is None or text is None or op.name not in EXPLAINABLE:
            return None
        try:
            entry = await self._explain_conn(db)
        except Exception as exc:
            log.warning("cannot open an EXPLAIN connection: %s", exc,
                        extra={"tenant": db.tenant, "database": db.name})
            return None
        params = [int(n) for n in _PARAM.findall(text)]
        timeout_ms = max(1, int(self.config.explain_timeout * 1000))
        async with entry.lock:
            entry.last_used = time.monotonic()
            conn = entry.conn
            try:
                async with asyncio.timeout(self.config.explain_timeout + 1.0):
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                        if not params:
                            # fetchval uses the extended protocol: one statement, never run.
                            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + text)
                        else:
                            # Parameters ($1...): a generic plan, as PG 16's GENERIC_PLAN.
                            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                            await conn.fetch("PREPARE o7s_explain AS " + text)
                            try:
                                nulls = ", ".join(["NULL"] * max(params))
                                plan = await conn.fetchval(
                                    f"EXPLAIN (FORMAT JSON) EXECUTE o7s_explain({nulls})")
                            finally:
                                await conn.execute("DEALLOCATE o7s_explain")
            except (asyncpg.PostgresError, TimeoutError, ValueError) as exc:
                log.debug("no cost estimate: %s", exc)
                return None
            except (asyncpg.InterfaceError, OSError) as exc:
                self._explain.pop((db.tenant, db.name), None)
                log.warning("EXPLAIN connection failed: %s", exc)
                return None
        try:
            doc = json.loads(plan) if isinstance(plan, str) else plan
            return float(doc[0]["Plan"]["Total Cost"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    async def _explain_conn(self, db: DatabaseRecord) -> _ExplainConn:
        key = (db.tenant, db.name)
        entry = self._explain.get(key)
        if entry is not None and not entry.conn.is_closed():
            return entry
        host, port, user, password, dbname = await self.upstream_target(db)
        conn = await asyncpg.connect(host=host, port=port, user=user, password=password,
                                     database=dbname, timeout=self.config.connect_timeout,
                                     statement_cache_size=0, ssl=self.upstream_tls(db) or False,
                                     server_settings={"application_name": "o7s:explain",
                                                      **self.upstream_startup(db)})
        entry = self._explain[key] = _ExplainConn(conn)
        return entry

    # -- Studio's console --------------------------------------------------------------------
    def console_operation(self, request: dict[str, Any]) -> tuple[str, str, str]:
        sql = request.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError('a Postgres console request is {"sql": "..."}')
        return "query", verb_of(sql), sql

    async def console(self, db: DatabaseRecord, request: dict[str, Any],
                      session: Session) -> dict[str, Any]:
        from ogelkit_postgres.console import run_sql
        return await run_sql(self, db, request["sql"], session)

    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        dbname = db.upstream.get("dbname")
        if not dbname:
            return None
        async with self._admin() as conn:
            return await conn.fetchval("SELECT pg_database_size(datname) FROM pg_database "
                                       "WHERE datname = $1", dbname)

    async def sleep(self, db: DatabaseRecord) -> None:
        """Lifecycle: close every pooled server connection of ``db`` (and the planner's
        EXPLAIN connection), so nothing of it stays open upstream."""
        pool = self.pools.get((db.tenant, db.name))
        if pool is not None:
            pool.sleep()
        entry = self._explain.pop((db.tenant, db.name), None)
        if entry is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.close(), 2)

    async def wake(self, db: DatabaseRecord) -> None:
        await self.pool_for(db).wake()

    def describe(self) -> dict[str, Any]:
        return {f"{k[0]}/{k[1]}": p.stats() for k, p in self.pools.items()}


class _AdminConn:
    """``async with backend._admin() as conn``: a connection of the admin pool."""

    def __init__(self, backend: PostgresBackend):
        self.backend = backend
        self.conn: Any = None
        self.pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self.pool = await self.backend._admin_pool_get()
        self.conn = await self.pool.acquire(timeout=self.backend.config.connect_timeout)
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        assert self.pool is not None
        await self.pool.release(self.conn)


def _ms(seconds: float | None) -> str:
    return "0" if seconds is None else f"{max(1, round(seconds * 1000))}ms"
