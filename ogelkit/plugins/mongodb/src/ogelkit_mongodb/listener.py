"""The MongoDB front door: one listening port for every ``mongodb`` backend.

The connection lifecycle (login steps, client set, drain, metrics) is the core's
``ogelkit.FrontDoor``; this class adds what only MongoDB has: the limits ``hello``
advertises (the smallest of the upstreams'), and the message-size and handshake bounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ogelkit
from ogelkit_mongodb import wire
from ogelkit_mongodb.connection import InflightShare, MongoConnection

if TYPE_CHECKING:
    from ogelkit import Backend, GatewayContext, Session

MAX_WIRE_VERSION = 21  # MongoDB 7.0: the newest command set the gateway maps


class MongoFrontDoor(ogelkit.FrontDoor):
    protocol = "mongodb"
    default_port = 27017

    def __init__(self, context: GatewayContext, *, host: str, port: int,
                 backends: list[Backend]):
        super().__init__(context, host=host, port=port, backends=backends)
        self.backend_ids = {b.name for b in backends}
        self.max_message = max(b.config.max_message_size for b in backends)
        #: An unauthenticated connection that sends no complete command this long is closed.
        self.handshake_timeout = max(b.config.handshake_timeout for b in backends)
        self._inflight: dict[tuple[str, str | None], InflightShare] = {}
        #: malformed-input log lines: [this second's start, lines in it, lines suppressed]
        self.log_window: list[Any] = [0.0, 0, 0]

    def inflight_share(self, backend: Backend, session: Session | None) -> InflightShare:
        """The tenant's share of ``backend``'s upstream (``TENANT_INFLIGHT_BYTES``)."""
        key = (backend.name, session.tenant_slug if session is not None else None)
        share = self._inflight.get(key)
        if share is None:
            if len(self._inflight) > 100_000:  # tenants come and go: forget the idle ones
                self._inflight = {k: v for k, v in self._inflight.items()
                                  if v.bytes or v.waiting}
            share = self._inflight[key] = InflightShare()
        return share

    def add_backend(self, backend: Backend) -> None:
        super().add_backend(backend)
        self.backend_ids.add(backend.name)
        self.max_message = max(self.max_message, backend.config.max_message_size)
        self.handshake_timeout = max(self.handshake_timeout, backend.config.handshake_timeout)

    def new_connection(self) -> MongoConnection:
        return MongoConnection(self)

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """A MongoDB message header: int32 length (at least a header), request id, response
        to, and an opcode the gateway knows. The length alone rules other protocols out
        after 4 bytes, so a short Redis ``PING`` is not held waiting for 16."""
        if len(head) >= 4 and not wire.HEADER_SIZE <= int.from_bytes(head[:4], "little") \
                <= 48_000_000:
            return False
        if len(head) < wire.HEADER_SIZE:
            return None
        length, _req, _resp, opcode = wire.HEADER.unpack_from(head)
        return length >= wire.HEADER_SIZE and opcode in (wire.OP_MSG, wire.OP_QUERY,
                                                         wire.OP_COMPRESSED)

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self.clients),
                "authenticated": sum(1 for c in self.clients if c.authenticated)}

    # -- what hello advertises -------------------------------------------------------------
    def server_limits(self) -> dict[str, Any]:
        infos = [b.server_info for b in self.backends]  # type: ignore[attr-defined]
        out: dict[str, Any] = {
            "maxBsonObjectSize": min(i["maxBsonObjectSize"] for i in infos),
            "maxMessageSizeBytes": min(min(i["maxMessageSizeBytes"] for i in infos),
                                       self.max_message),
            "maxWriteBatchSize": min(i["maxWriteBatchSize"] for i in infos),
        }
        timeouts = [i.get("logicalSessionTimeoutMinutes") for i in infos]
        if all(t is not None for t in timeouts):
            out["logicalSessionTimeoutMinutes"] = min(timeouts)
        out["minWireVersion"] = 0
        out["maxWireVersion"] = min(MAX_WIRE_VERSION, *(i["maxWireVersion"] for i in infos))
        return out
