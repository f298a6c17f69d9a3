"""The Postgres front door: one listening port for every backend that speaks the protocol.

The connection lifecycle (login steps, client set, drain, metrics) is the core's
``ogelkit.FrontDoor``; this class adds what only Postgres has: TLS with SNI, cancel keys
(BackendKeyData and CancelRequest, across replicas), upstream cancels and the pools' stats.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

import ogelkit
from ogelkit_postgres.cancel import CancelKeys
from ogelkit_postgres.connection import PostgresConnection, TurnClock
from ogelkit_postgres.upstream import send_cancel

if TYPE_CHECKING:
    from ogelkit import Reject
    from ogelkit_postgres.pool import Pool
    from ogelkit_postgres.upstream import ServerConnection

log = logging.getLogger("ogelkit.postgres")


class PostgresFrontDoor(ogelkit.FrontDoor):
    protocol = "postgres"
    default_port = 5432

    def __init__(self, context: Any, *, host: str, port: int, backends: list[Any]):
        super().__init__(context, host=host, port=port, backends=backends)
        self.ssl_context: ssl.SSLContext | None = None
        #: ``login_timeout``: connect to authenticated, then the client is closed.
        self.handshake_timeout = max(b.config.login_timeout for b in backends)
        self.cancel_keys = CancelKeys(context, max(b.config.cancel_key_ttl for b in backends))
        #: each tenant's share of an event-loop turn (``connection.TENANT_UNITS_PER_TURN``)
        self.turns = TurnClock()
        m = context.metrics
        self._checkout = {b.name: m.checkout_seconds.labels(b.name) for b in backends}

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """A startup-phase packet: int32 length, then a protocol code (3.0, SSLRequest,
        GSSENCRequest or CancelRequest). The length alone rules other protocols out after
        4 bytes, so a short Redis ``PING`` is not held waiting for 8."""
        if len(head) >= 4 and not 8 <= int.from_bytes(head[:4], "big") <= 10_000:
            return False
        if len(head) < 8:
            return None
        code = int.from_bytes(head[4:8], "big")
        return code >> 16 == 3 or code in (80877102, 80877103, 80877104)

    # -- lifecycle -------------------------------------------------------------------------
    def new_connection(self) -> PostgresConnection:
        return PostgresConnection(self)

    async def start(self) -> list[tuple[str, int]]:
        listen = self.context.config.listen
        if listen.tls_cert:
            self.ssl_context = make_ssl_context(listen.tls_cert, listen.tls_key)
        addresses = await super().start()
        self.cancel_keys.start()
        return addresses

    async def close(self, reason: Reject) -> None:
        await super().close(reason)
        await self.cancel_keys.close()

    # -- connections -----------------------------------------------------------------------
    def new_key(self, conn: PostgresConnection, pid: int | None = None) -> tuple[int, int]:
        conn.key = self.cancel_keys.new(conn, pid)
        return conn.key

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
            host, port, tls = srv.address
            if not port:  # not opened by open_server (a third-party backend's own)
                host, port = srv.pool.backend.upstream_address()
            await send_cancel(host, port, srv.pid, srv.secret, tls=tls)
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
