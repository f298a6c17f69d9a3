"""The Redis front door: RESP2/RESP3 server on ``[listen] redis`` (default 6379)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ogelkit.backend import FrontDoor
from ogelkit.model import Reason, Reject, Session
from ogelkit.runtime import bind_host
from ogelkit_redis import resp
from ogelkit_redis.client import WRONGPASS, RedisClient, reject_error
from ogelkit_redis.handlers import HANDLERS

if TYPE_CHECKING:
    from ogelkit.control.records import DatabaseRecord
    from ogelkit.directory import TenantEntry

log = logging.getLogger("ogelkit.redis")


class RedisFrontDoor(FrontDoor):
    protocol = "redis"
    default_port = 6379
    #: On the one port, ask the stricter sniffers first: an inline command is any word.
    sniff_last = True

    def new_connection(self) -> RedisClient:
        return RedisClient(self)

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """For the one port: a RESP array (``*``) or an inline command (a letter)."""
        if not head:
            return None
        first = head[0]
        return first == 0x2A or (0x41 <= first <= 0x5A) or (0x61 <= first <= 0x7A)

    def __init__(self, context: Any, *, host: str, port: int, backends: list):
        super().__init__(context, host=host, port=port, backends=backends)
        self.clients: set[RedisClient] = set()
        self.handlers = HANDLERS
        self.draining = False
        self.observe = False
        self.active_sessions = 0
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.backend_ids = {b.name for b in backends}
        self.version = next((b.version for b in backends if getattr(b, "version", "")), "7.0.0")
        m = context.metrics
        self._m_accepted = m.connections.labels("redis", "accepted")
        self._m_rejected = m.connections.labels("redis", "rejected")
        self._m_auth_failed = m.connections.labels("redis", "auth_failed")
        self._m_active = m.connections_active.labels("redis")
        # Operation counts are plain integers on the hot path, moved into the Prometheus
        # counters once a second (a labelled inc() per command would cost a microsecond).
        self.ops = self.op_errors = self.op_rejected = 0
        self._pushed = [0, 0, 0]
        self._m_ops = [m.operations.labels("redis", o) for o in ("ok", "error", "rejected")]
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self) -> list[tuple[str, int]]:
        self.loop = asyncio.get_running_loop()
        chain = self.context.chain
        # Operations are built only when some layer looks at them: a gateway without such
        # layers forwards commands with no per-command objects at all.
        self.observe = chain is not None and any(
            "on_operation" in layer.phases or "on_complete" in layer.phases
            for layer in chain.layers)
        self.server = await self.loop.create_server(
            lambda: RedisClient(self), bind_host(self.host), self.port, reuse_address=True,
            backlog=1024)
        self._metrics_task = self.loop.create_task(self._push_metrics_forever())
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self.server.sockets]

    def push_metrics(self) -> None:
        errors, rejected = self.op_errors, self.op_rejected
        now = [self.ops - errors, errors, rejected]
        for i, counter in enumerate(self._m_ops):
            delta = now[i] - self._pushed[i]
            if delta > 0:
                counter.inc(delta)
                self._pushed[i] = now[i]

    async def _push_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.push_metrics()

    # -- client bookkeeping -------------------------------------------------------------------
    def opened(self, client: RedisClient) -> None:
        self.clients.add(client)
        self._m_accepted.inc()
        self._m_active.inc()
        if self.draining:
            client.close_with(Reject(Reason.SHUTDOWN, "the gateway is shutting down"))

    def closed(self, client: RedisClient) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self._m_active.dec()

    # -- authentication and routing (docs/dev/frontdoors.md steps 2-6) -----------------------
    def _pick_db(self, entry: TenantEntry, name: str) -> tuple[DatabaseRecord | None, str]:
        dbs = [d for d in entry.databases.values()
               if d.kind == "redis" and d.backend in self.backend_ids]
        if name:
            for d in dbs:
                if d.name == name:
                    return d, ""
            return None, f'ERR tenant "{entry.tenant.slug}" has no Redis database "{name}"'
        if len(dbs) == 1:
            return dbs[0], ""
        for preferred in ("default", "main"):
            for d in dbs:
                if d.name == preferred:
                    return d, ""
        if not dbs:
            return None, f'ERR tenant "{entry.tenant.slug}" has no Redis database'
        names = ", ".join(sorted(d.name for d in dbs))
        return None, (f'ERR tenant "{entry.tenant.slug}" has several Redis databases ({names}): '
                      f"log in as {entry.tenant.slug}.<database>")

    def _failed(self, client: RedisClient) -> None:
        """End the failed attempt's session (the log phase sees it) and start a new one."""
        client._end_session()
        client.session = Session("redis", client.session.client_addr)

    async def authenticate(self, client: RedisClient, user: str, password: str,
                           proto: int | None = None) -> bool:
        ctx = self.context
        s = client.session
        s.user = user
        slug, _, dbname = user.partition(".")
        try:
            entry = await ctx.directory.lookup(slug) if slug else None
        except Exception as exc:
            log.warning("control plane lookup failed: %s", exc)
            client.reply(resp.error("ERR the control plane is unavailable; retry in a moment"))
            return False
        if entry is not None:
            s.tenant = entry.tenant
        try:
            ctx.chain.auth(s)
        except Reject as rej:
            self._m_rejected.inc()
            client.reply(reject_error(rej))
            client.close()
            return False
        ok = entry is not None and await ctx.directory.check_password(entry, password)
        if not ok:
            s.rejection = Reject(Reason.AUTH if entry is not None else Reason.UNKNOWN,
                                 "invalid username-password pair")
            self._m_auth_failed.inc()
            client.reply(WRONGPASS)
            self._failed(client)
            return False
        if entry.tenant.suspended:
            s.rejection = Reject(Reason.SUSPENDED, f'tenant "{slug}" is suspended',
                                 hint="Contact the platform operator.")
            self._m_rejected.inc()
            client.reply(reject_error(s.rejection))
            self._failed(client)
            return False
        db, problem = self._pick_db(entry, dbname)
        if db is None:
            s.rejection = Reject(Reason.UNKNOWN, problem)
            client.reply(resp.error(problem))
            self._failed(client)
            return False
        backend = ctx.backends[db.backend]
        s.tier = entry.tier
        s.database = db.name
        s.db = db
        s.backend = backend
        s.authenticated = True
        try:
            await ctx.chain.connect(s)
        except Reject as rej:
            self._m_rejected.inc()
            client.reply(reject_error(rej))
            s.authenticated = False
            client.close()
            return False
        if client.closed:  # gone while we were checking: nothing to register
            return False
        tdb = backend.attach(db)
        index = tdb.pools.attach()
        ctx.sessions.add(s)
        self.active_sessions += 1
        client.authenticated(backend, tdb, index)
        try:  # connect the shared upstream now, so the first command does not wait
            await tdb.pools.get_shared(proto or client.proto, index)
        except Reject:
            pass  # commands will retry and report it
        return True

    # -- drain and shutdown ------------------------------------------------------------------
    async def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()

    async def drain(self) -> None:
        self.draining = True
        while self.clients:
            for c in list(self.clients):
                if c.is_idle():
                    c.close_with(Reject(Reason.SHUTDOWN, "the gateway is shutting down"))
            await asyncio.sleep(0.05)

    async def close(self, reason: Reject) -> None:
        for c in list(self.clients):
            c.close_with(reason)
        for _ in range(20):
            if not self.clients:
                break
            await asyncio.sleep(0.05)
        if self._metrics_task is not None:
            self._metrics_task.cancel()
        self.push_metrics()

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self.clients), "sessions": self.active_sessions,
                "backends": {b.name: b.stats() for b in self.backends}}
