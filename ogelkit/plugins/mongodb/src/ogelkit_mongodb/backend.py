"""``MongoBackend``: one upstream MongoDB or FerretDB server behind the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ogelkit import Backend
from ogelkit_mongodb import commands, cost
from ogelkit_mongodb.cursors import CursorTable
from ogelkit_mongodb.options import MongoOptions
from ogelkit_mongodb.upstream import Target, UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Operation, Session, TenantRecord, Tier

log = logging.getLogger("ogelkit.mongodb")

#: Collection created in every provisioned upstream database (FerretDB and MongoDB create
#: databases lazily); hidden from the tenant's listCollections.
MARKER = "__ogelkit"
_BAD_DB_CHARS = set('/\\. "$*<>:|?\0')
NAMESPACE_EXISTS = 48


class MongoBackend(Backend):
    """Tenant databases as upstream databases on one MongoDB-compatible server."""

    type_name = "mongodb"
    Config = MongoOptions
    protocol = "mongodb"  # served by MongoFrontDoor (registered in plugin.py)

    def __init__(self, config: MongoOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.options = config
        self.target: Target | None = None
        self._pool: UpstreamPool | None = None
        self.cursors = CursorTable(config.cursor_timeout)
        # What hello advertises until the first upstream handshake tells the real values.
        self.server_info: dict[str, Any] = {
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30,
            "maxWireVersion": 21}
        self.build_info: dict[str, Any] | None = None
        self.killop: bool | None = None  # None = not known yet
        self.max_time_commands = commands.MAX_TIME
        self.costs = cost.CostEstimator(self)
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        self.target = Target(self.options.url)  # URL errors surface at startup

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            if self.target is None:
                self.target = Target(self.options.url)
            self._pool = UpstreamPool(
                self.name, self.target, size=self.options.pool_size,
                connect_timeout=self.options.connect_timeout,
                max_reply=max(self.options.max_message_size, 48_000_000) + 16 * 1024 * 1024,
                on_hello=self._on_hello)
        return self._pool

    def _on_hello(self, hello: dict[str, Any]) -> None:
        for key in ("maxBsonObjectSize", "maxMessageSizeBytes", "maxWriteBatchSize",
                    "maxWireVersion"):
            if isinstance(hello.get(key), int):
                self.server_info[key] = hello[key]
        if isinstance(hello.get("logicalSessionTimeoutMinutes"), int):
            self.server_info["logicalSessionTimeoutMinutes"] = hello["logicalSessionTimeoutMinutes"]
        else:
            self.server_info["logicalSessionTimeoutMinutes"] = None  # upstream has no sessions
        info = self.pool.build_info
        if self.build_info is None and info is not None:
            self._learned_build(info)

    def _learned_build(self, info: dict[str, Any]) -> None:
        self.build_info = info
        if "ferretdbVersion" in info:
            # FerretDB 1.x has no killOp and refuses maxTimeMS on distinct.
            self.killop = False
            self.max_time_commands = commands.MAX_TIME - {"distinct"}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            self._pool.close()

    async def sleep(self, db: DatabaseRecord) -> None:
        """Lifecycle: the upstream pool is shared by every tenant database of this backend,
        so it is closed (reopened lazily by the next command) only when no client of any of
        them is connected and no cursor is open; otherwise nothing is released."""
        if self._pool is None or len(self.cursors):
            return
        sessions = self.context.sessions
        if any(s.backend is self for slug in sessions.tenants() for s in sessions.of(slug)):
            return
        pool, self._pool = self._pool, None
        pool.close()

    async def check(self) -> None:
        reply = await self.pool.command("admin", {"ping": 1})
        if not reply.get("ok"):
            raise UpstreamError(f"ping failed: {reply.get('errmsg')}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- names -------------------------------------------------------------------------------
    def upstream_name(self, tenant: str, db: str) -> str:
        """The upstream database of tenant database ``db`` (stored at provisioning)."""
        name = self.options.database_format.replace("{tenant}", tenant).replace("{db}", db)
        if len(name.encode()) > 63 or set(name) & _BAD_DB_CHARS:
            name = "t_" + hashlib.sha256(f"{tenant}/{db}".encode()).hexdigest()[:24]
        return name

    # -- provisioning ------------------------------------------------------------------------
    async def provision(self, tenant: TenantRecord, name: str, tier: Tier) -> dict[str, Any]:
        upstream = self.upstream_name(tenant.slug, name)
        reply = await self.pool.command(upstream, {"create": MARKER})
        if not reply.get("ok") and reply.get("code") != NAMESPACE_EXISTS:
            raise UpstreamError(f"cannot create {upstream}: {reply.get('errmsg')}")
        return {"database": upstream}

    async def deprovision(self, tenant: TenantRecord, db: DatabaseRecord) -> None:
        upstream = db.upstream.get("database") or self.upstream_name(tenant.slug, db.name)
        reply = await self.pool.command(upstream, {"dropDatabase": 1})
        if not reply.get("ok"):
            raise UpstreamError(f"cannot drop {upstream}: {reply.get('errmsg')}")

    def connection_string(self, tenant: TenantRecord, db: DatabaseRecord, password: str | None,
                          host: str, port: int) -> str:
        secret = quote(password, safe="") if password else "<password>"
        return (f"mongodb://{quote(tenant.slug, safe='')}:{secret}@{host}:{port}/{db.name}"
                f"?authSource={db.name}&authMechanism=SCRAM-SHA-256")

    # -- capabilities ------------------------------------------------------------------------
    def session_settings(self, session: Session) -> dict[str, str]:
        tier = session.tier
        if tier is None or tier.statement_timeout is None:
            return {}
        return {"maxTimeMS": str(int(tier.statement_timeout * 1000))}

    # -- Studio's collection browser ---------------------------------------------------------
    def console_operation(self, request: dict[str, Any]) -> tuple[str, str, str]:
        from ogelkit_mongodb.console import parse
        name, doc = parse(request.get("document"))
        return "command", name, str(doc)

    async def console(self, db: DatabaseRecord, request: dict[str, Any],
                      session: Any) -> dict[str, Any]:
        from ogelkit_mongodb.console import run
        upstream = db.upstream.get("database") or self.upstream_name(db.tenant, db.name)
        return await run(self, upstream, request.get("document"))

    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        reply = await self.pool.command(db.upstream["database"], {"dbStats": 1})
        if not reply.get("ok"):
            return None
        for key in ("totalSize",):
            if isinstance(reply.get(key), int | float):
                return int(reply[key])
        return int(reply.get("storageSize", 0)) + int(reply.get("indexSize", 0))

    def cost_key(self, op: Operation) -> Hashable | None:
        return self.costs.key(op)

    async def estimate_cost(self, op: Operation) -> float | None:
        return await self.costs.estimate(op)

    # -- cancelling a running command --------------------------------------------------------
    def stop_running(self, conn: UpstreamConnection) -> None:
        """The client gave up on the command running on ``conn`` (timeout, disconnect)."""
        conn.abandon()
        if self.killop is False or conn.connection_id is None:
            conn.close()  # the upstream stops what it runs for a closed connection
            return
        self._spawn(self._kill_op(conn))

    async def _kill_op(self, conn: UpstreamConnection) -> None:
        try:
            ops = await self.pool.command("admin", {"currentOp": 1,
                                                    "connectionId": conn.connection_id})
            inprog = ops.get("inprog") or []
            if not ops.get("ok") or not inprog:
                raise UpstreamError("operation not found")
            for entry in inprog:
                reply = await self.pool.command("admin", {"killOp": 1, "op": entry["opid"]})
                if not reply.get("ok"):
                    if reply.get("code") == 59:
                        self.killop = False
                    raise UpstreamError(str(reply.get("errmsg")))
            self.killop = True
        except Exception as exc:
            log.info("killOp not possible (%s): closing the upstream connection", exc)
            conn.close()

    def describe(self) -> dict[str, Any]:
        return {"pool": self._pool.stats() if self._pool else None, "cursors": len(self.cursors)}
