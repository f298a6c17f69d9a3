"""The Redis front door: RESP2/RESP3 server on ``[listen] redis`` (default 6379).

The connection lifecycle (login steps, client set, event-driven drain, metrics) is the
core's ``ogelkit.FrontDoor``; this class adds what only Redis has: the command handlers,
the server version reported before a client is routed, and the bound on how long a
client may stay unauthenticated (``handshake_timeout``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ogelkit
from ogelkit_redis.backend import RedisBackend
from ogelkit_redis.connection import RedisConnection
from ogelkit_redis.handlers import HANDLERS

if TYPE_CHECKING:
    from ogelkit import Backend, GatewayContext


class RedisFrontDoor(ogelkit.FrontDoor):
    protocol = "redis"
    default_port = 6379
    #: On the one port, ask the stricter sniffers first: an inline command is any word.
    sniff_last = True

    def __init__(self, context: GatewayContext, *, host: str, port: int,
                 backends: list[Backend]):
        super().__init__(context, host=host, port=port, backends=backends)
        self.handlers = HANDLERS
        self.redis_backends = [b for b in backends if isinstance(b, RedisBackend)]
        self.backend_ids = {b.name for b in backends}
        self.version = next((v for b in backends if (v := getattr(b, "version", ""))), "7.0.0")
        #: Seconds from connect to a successful AUTH/HELLO before the client is closed.
        self.handshake_timeout = max(b.config.handshake_timeout for b in backends)

    def add_backend(self, backend: Backend) -> None:
        super().add_backend(backend)
        self.backend_ids.add(backend.name)
        if isinstance(backend, RedisBackend):
            self.redis_backends.append(backend)
        self.handshake_timeout = max(self.handshake_timeout, backend.config.handshake_timeout)

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """For the one port: a RESP array (``*``) or an inline command (an ASCII letter)."""
        if not head:
            return None
        first = head[0]
        return first == 0x2A or (0x41 <= first <= 0x5A) or (0x61 <= first <= 0x7A)

    def new_connection(self) -> RedisConnection:
        return RedisConnection(self)

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self.clients),
                "sessions": sum(1 for c in self.clients if c.authed),
                "backends": {b.name: b.stats() for b in self.redis_backends}}
