"""The gateway's memory ceilings for replies clients do not read (``[limits]``).

A client that stops reading makes its transport's write buffer grow: every reply the
upstream sends for it lands there. The doors bound how much they ask for meanwhile
(``[limits] max_inflight``; Postgres pauses the server connection, MongoDB runs no next
request) but a reply already asked for can still be large (a 1M-element LRANGE, a 16 MB
batch). ``OutputGuard`` watches only the connections whose transport said
``pause_writing`` (above the high-water mark; the hot path of a reading client never
touches it): every 100 ms it sums their buffers, and refuses, in the client's protocol
(``Reject(Reason.MEMORY)``), a connection over ``connection_output`` and, while the total
is over ``gateway_output``, the one holding the most. A refused client that still does
not read is aborted a second later, which frees its buffer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from ogelkit.model import Reason, Reject

if TYPE_CHECKING:
    from ogelkit.config.models import LimitsConfig

log = logging.getLogger("ogelkit.limits")

#: The defaults of ``[limits]`` (``ogelkit.config.models.LimitsConfig`` documents them).
MAX_INFLIGHT = 128
CONNECTION_OUTPUT = 64 * 1024 * 1024
GATEWAY_OUTPUT = 512 * 1024 * 1024

CHECK_EVERY = 0.1  # seconds between looks at the paused connections' buffers
ABORT_AFTER = 1.0  # a refused connection's grace to read its error before it is dropped


class Buffered(Protocol):
    """What the guard needs of a door's connection (``frontdoor.Connection`` + transport)."""

    transport: Any

    def close_with(self, reject: Reject) -> None: ...

    def abort(self) -> None: ...


def memory_reject(what: str, limit: int) -> Reject:
    return Reject(Reason.MEMORY, f"out of memory: {what}",
                  detail=f"limit {limit} bytes",
                  hint="Read replies as they come (or ask for less at a time), then "
                       "reconnect.")


class OutputGuard:
    """Per-connection and per-gateway ceilings on buffered output (one per gateway)."""

    def __init__(self, connection_limit: int, gateway_limit: int):
        self.connection_limit = connection_limit
        self.gateway_limit = gateway_limit
        self.paused: set[Buffered] = set()
        self.refused = 0  # connections refused so far (tests, stats)
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_config(cls, limits: LimitsConfig | None) -> OutputGuard:
        if limits is None:
            return cls(CONNECTION_OUTPUT, GATEWAY_OUTPUT)
        return cls(limits.connection_output, limits.gateway_output)

    def writing_paused(self, conn: Buffered) -> None:
        """``conn``'s transport called ``pause_writing``: watch its buffer."""
        self.paused.add(conn)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(CHECK_EVERY, self._check)

    def writing_resumed(self, conn: Buffered) -> None:
        self.paused.discard(conn)

    def buffered(self, conn: Buffered) -> int:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size())

    def _check(self) -> None:
        self._timer = None
        sizes: dict[Buffered, int] = {}
        for conn in list(self.paused):
            size = self.buffered(conn)
            if size <= 0:
                self.paused.discard(conn)
                continue
            if size > self.connection_limit:
                self._refuse(conn, memory_reject(
                    f"{size} bytes of replies buffered for this connection", self.connection_limit))
                continue
            sizes[conn] = size
        total = sum(sizes.values())
        for conn in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= self.gateway_limit:
                break
            total -= sizes[conn]
            self._refuse(conn, memory_reject(
                "the gateway's buffers for clients that do not read are full",
                self.gateway_limit))
        if self.paused:
            self._timer = asyncio.get_running_loop().call_later(CHECK_EVERY, self._check)

    def _refuse(self, conn: Buffered, reject: Reject) -> None:
        self.paused.discard(conn)
        self.refused += 1
        log.warning("connection refused: %s", reject.message)
        try:
            conn.close_with(reject)
        finally:
            asyncio.get_running_loop().call_later(ABORT_AFTER, self._abort, conn)

    @staticmethod
    def _abort(conn: Buffered) -> None:
        if conn.transport is not None:
            conn.abort()


__all__ = ["CONNECTION_OUTPUT", "GATEWAY_OUTPUT", "MAX_INFLIGHT", "OutputGuard", "memory_reject"]
