"""The Postgres front door: one listening port for every backend that speaks the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from ogelkit.backend import FrontDoor
from ogelkit.model import Reason, Reject
from ogelkit.runtime import bind_host
from ogelkit_postgres.cancel import CancelKeys
from ogelkit_postgres.client import ClientConnection
from ogelkit_postgres.server import send_cancel

if TYPE_CHECKING:
    from ogelkit_postgres.pool import Pool
    from ogelkit_postgres.server import ServerConnection

log = logging.getLogger("ogelkit.postgres")


class PostgresFrontDoor(FrontDoor):
    protocol = "postgres"
    default_port = 5432

    def __init__(self, context, *, host, port, backends):
        super().__init__(context, host=host, port=port, backends=backends)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clients: set[ClientConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.ssl_context: ssl.SSLContext | None = None
        self.login_timeout = max(b.config.login_timeout for b in backends)
        self.cancel_keys = CancelKeys(context, max(b.config.cancel_key_ttl for b in backends))
        self._tasks: set[asyncio.Task[Any]] = set()
        m = context.metrics
        self._conn_metrics = {o: m.connections.labels("postgres", o)
                              for o in ("accepted", "rejected", "auth_failed", "error")}
        self._active = m.connections_active.labels("postgres")
        self._ops_ok = m.operations.labels("postgres", "ok")
        self._ops_error = m.operations.labels("postgres", "error")
        self._ops_rejected = m.operations.labels("postgres", "rejected")
        self._checkout = {b.name: m.checkout_seconds.labels(b.name) for b in backends}
        self.observe = True
        self.n_ok = self.n_error = self.n_rejected = 0
        self._pub_ok = self._pub_error = self._pub_rejected = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> list[tuple[str, int]]:
        self.loop = asyncio.get_running_loop()
        chain = self.context.chain
        # Operations are built only when some layer looks at them (as the Redis front door
        # does): without such layers a statement costs no per-statement objects.
        self.observe = chain is not None and any(
            "on_operation" in layer.phases or "on_complete" in layer.phases
            for layer in chain.layers)
        listen = self.context.config.listen
        if listen.tls_cert:
            self.ssl_context = make_ssl_context(listen.tls_cert, listen.tls_key)
        server = await self.loop.create_server(
            lambda: ClientConnection(self), host=bind_host(self.host), port=self.port,
            reuse_address=True, backlog=2048)
        self.servers.append(server)
        self.cancel_keys.start()
        self.spawn(self._publish_metrics())
        return [sock.getsockname()[:2] for sock in server.sockets]

    async def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self) -> None:
        reason = Reject(Reason.SHUTDOWN, "terminating connection: the gateway is shutting down",
                        hint="Reconnect; another gateway (or this one, restarted) will serve you.")
        while self.clients:
            for conn in list(self.clients):
                if conn.is_idle():
                    conn.close_with(reason)
            await asyncio.sleep(0.05)

    async def close(self, reason: Reject) -> None:
        for conn in list(self.clients):
            conn.close_with(reason)
        for _ in range(100):
            if not self.clients:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.clients):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        self.flush_metrics()
        await self.cancel_keys.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- connections -----------------------------------------------------------------------
    def count_connection(self, outcome: str) -> None:
        self._conn_metrics[outcome].inc()

    def new_key(self, conn: ClientConnection) -> tuple[int, int]:
        conn.key = self.cancel_keys.new(conn)
        return conn.key

    def session_opened(self, conn: ClientConnection) -> None:
        self.clients.add(conn)
        self._active.inc()

    def client_closed(self, conn: ClientConnection) -> None:
        if conn in self.clients:
            self.clients.discard(conn)
            self._active.dec()
        if conn.key is not None:
            self.cancel_keys.drop(conn.key)
        session = conn.session
        if session is not None:
            self.context.sessions.discard(session)
            session.closed_at = time.monotonic()
            chain = self.context.chain
            if chain is not None:
                chain.disconnect(session)

    # -- operations ------------------------------------------------------------------------
    async def _publish_metrics(self) -> None:
        """Operation counters are plain ints on the hot path (a Prometheus ``inc`` takes a
        lock, about a microsecond); they reach the registry once a second."""
        while True:
            await asyncio.sleep(1.0)
            self.flush_metrics()

    def flush_metrics(self) -> None:
        for counter, value, attr in ((self._ops_ok, self.n_ok, "_pub_ok"),
                                     (self._ops_error, self.n_error, "_pub_error"),
                                     (self._ops_rejected, self.n_rejected, "_pub_rejected")):
            delta = value - getattr(self, attr)
            if delta > 0:  # "ok" can step back when an error arrives for a counted op
                counter.inc(delta)
                setattr(self, attr, value)

    def observe_checkout(self, pool: Pool, seconds: float) -> None:
        hist = self._checkout.get(pool.backend.name)
        if hist is not None:
            hist.observe(seconds)

    # -- cancel ----------------------------------------------------------------------------
    async def handle_cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest from a client (never answered, as in PostgreSQL)."""
        await self.cancel_keys.cancel(pid, secret)

    async def cancel_upstream(self, srv: ServerConnection) -> None:
        """CancelRequest to whatever ``srv`` is running. The connection is not released to
        another client until the cancel has been delivered, so it cannot hit the next one."""
        srv.cancels_pending += 1
        try:
            host, port = srv.pool.backend.upstream_address()
            await send_cancel(host, port, srv.pid, srv.secret)
        finally:
            srv.cancels_pending -= 1
            if not srv.cancels_pending and srv.release_after_cancel:
                srv.release_after_cancel = False
                if srv.client is None:
                    srv.pool.checkin(srv)

    async def cancel_and_close(self, srv: ServerConnection) -> None:
        try:
            await self.cancel_upstream(srv)
        finally:
            srv.close()

    def stats(self) -> dict[str, Any]:
        pools = {}
        for backend in self.backends:
            for key, pool in getattr(backend, "pools", {}).items():
                pools[f"{backend.name}:{key[0]}/{key[1]}"] = pool.stats()
        return {"clients": len(self.clients), "pools": pools}


def make_ssl_context(cert: str, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def remember_sni(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # The tenant may be the first label of the name the client connected to.
        if server_name:
            with contextlib.suppress(AttributeError):
                sslobj.o7s_sni = server_name
        return None

    ctx.sni_callback = remember_sni
    return ctx
