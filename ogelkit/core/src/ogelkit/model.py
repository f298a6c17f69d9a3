"""The protocol-agnostic model every layer sees: ``Session``, ``Operation`` and ``Reject``.

A front door (the Postgres, Redis, MongoDB ... protocol server) creates one ``Session`` per
client connection and one ``Operation`` per client request. Both are plain ``__slots__``
objects because they are built on the hot path; layers keep per-session scratch data in
``session.state`` keyed by their own name.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ogelkit.backend import Backend
    from ogelkit.control.records import DatabaseRecord, TenantRecord
    from ogelkit.tiers import Tier

_session_ids = itertools.count(1)


class Reason(StrEnum):
    """Why something was refused. Front doors map these onto their protocol's error codes
    (a ``StrEnum``: members compare equal to their string values, and ``for r in Reason``
    lists them, so "every reason is mapped" is a one-line check)."""

    AUTH = "auth"  # bad credentials
    UNKNOWN = "unknown"  # unknown tenant or database
    SUSPENDED = "suspended"  # tenant suspended
    BANNED = "banned"  # temporarily blocked by the intelligence layer
    CONNECTIONS = "connections"  # connection cap reached
    RATE = "rate"  # operations per second
    COST = "cost"  # estimated cost over the tier's ceiling
    TIMEOUT = "timeout"  # gateway-side deadline
    QUOTA = "quota"  # storage / memory / key quota
    MEMORY = "memory"  # the gateway's own memory ceiling (per connection, per gateway)
    FORBIDDEN = "forbidden"  # command not allowed through the gateway
    UNAVAILABLE = "unavailable"  # upstream or shared state down (fail closed)
    SHUTDOWN = "shutdown"  # gateway draining


class Reject(Exception):
    """Raised by a layer (or the core) to refuse a connection or an operation.

    Every limit error carries what the client needs to act: ``detail`` (current/limit and
    tier) and ``hint`` (retry after N ms, or the tier that would allow it). Front doors turn
    it into SQLSTATE, a Redis error reply, a MongoDB error document or an HTTP status.
    """

    __slots__ = ("detail", "hint", "layer", "message", "reason", "retry_after")

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
        layer: str | None = None,
    ):
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.detail = detail
        self.hint = hint
        self.retry_after = retry_after  # seconds
        self.layer = layer

    def __repr__(self) -> str:
        return f"Reject({self.reason!r}, {self.message!r})"


class Session:
    """One client connection, from authentication to close."""

    __slots__ = (
        "authenticated",
        "backend",
        "bytes_in",
        "bytes_out",
        "client_addr",
        "closed_at",
        "closer",
        "database",
        "db",
        "id",
        "opened_at",
        "opened_wall",
        "operations",
        "protocol",
        "rejection",
        "settings",
        "state",
        "tenant",
        "tier",
        "user",
    )

    def __init__(self, protocol: str, client_addr: str, user: str = ""):
        self.id: int = next(_session_ids)
        self.protocol = protocol
        self.client_addr = client_addr  # "ip:port" or "[ipv6]:port"
        self.user = user  # the name the client logged in with
        self.tenant: TenantRecord | None = None
        self.tier: Tier | None = None
        self.database: str | None = None  # the tenant's own name for its database
        self.db: DatabaseRecord | None = None
        self.backend: Backend | None = None
        self.authenticated = False
        self.rejection: Reject | None = None
        self.opened_at = time.monotonic()
        self.opened_wall = time.time()
        self.closed_at: float | None = None
        self.operations = 0
        self.bytes_in = 0
        self.bytes_out = 0
        # Upstream session settings the front door applies at every checkout (session layer).
        self.settings: dict[str, str] = {}
        self.state: dict[str, Any] = {}
        # Set by the front door: close this client with a Reject (tier downgrade, ban, drain).
        self.closer: Callable[[Reject], None] | None = None

    @property
    def tenant_slug(self) -> str | None:
        return self.tenant.slug if self.tenant is not None else None

    @property
    def client_host(self) -> str:
        host, _, _ = self.client_addr.rpartition(":")
        return host.strip("[]") or self.client_addr

    def close(self, reason: Reject) -> None:
        """Ask the front door to close this client, telling it why in its own protocol."""
        if self.closer is not None:
            self.closer(reason)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol} {self.tenant_slug}/{self.database}>"


class Operation:
    """One client request: a SQL statement, a Redis command, a MongoDB command, an HTTP call.

    ``name`` is a short, bounded verb ("SELECT", "GET", "find") fit for metric labels;
    ``text`` is the statement or ``None`` when the protocol has none. The front door fills
    in the result fields before ``complete``; ``canceller`` lets the timeout layer stop the
    operation upstream and answer the client with a ``Reject``.

    ``count`` is how many client requests the operation stands for: 1, or the size of a
    *batch* (pipelined requests of one read that a front door admits and completes as one
    unit when every layer of the chain accepts batches, see ``Layer.batches``). A batch is
    admitted or refused as a whole; ``failed`` says how many of its requests got an
    upstream error (``error`` is the first one's code).
    """

    __slots__ = (
        "bytes_out",
        "canceller",
        "cost",
        "count",
        "ended",
        "error",
        "failed",
        "kind",
        "name",
        "rejection",
        "rows",
        "session",
        "size",
        "started",
        "state",
        "text",
        "written",
    )

    def __init__(self, session: Session, kind: str, name: str, text: str | None = None,
                 size: int = 0):
        self.session = session
        self.kind = kind  # "query", "command", "call", ...
        self.name = name
        self.text = text
        self.size = size  # request bytes
        self.started = time.monotonic()
        self.ended: float | None = None
        self.bytes_out = 0
        self.rows: int | None = None  # rows/documents returned, when the protocol reports them
        self.written: int | None = None  # rows/documents written, when known
        self.cost: float | None = None  # estimated cost, set by the cost layer
        self.error: str | None = None  # upstream error code (SQLSTATE, Redis prefix ...)
        self.rejection: Reject | None = None
        self.canceller: Callable[[Reject], None] | None = None
        self.state: dict[str, Any] | None = None  # lazily created; most operations need none
        self.count = 1  # client requests this operation stands for (a batch: more)
        self.failed = 0  # of a batch: requests answered with an upstream error

    @property
    def backend(self) -> Backend | None:
        return self.session.backend

    @property
    def duration(self) -> float:
        end = self.ended if self.ended is not None else time.monotonic()
        return end - self.started

    @property
    def failures(self) -> int:
        """Requests of this operation that got an upstream error (0 or 1 unless a batch)."""
        return self.failed or (0 if self.error is None else 1)

    @property
    def outcome(self) -> str:
        """``ok``, ``error`` (upstream error) or ``rejected`` (a layer said no)."""
        if self.rejection is not None:
            return "rejected"
        return "error" if self.error is not None else "ok"

    def cancel(self, reason: Reject) -> bool:
        """Cancel upstream and answer the client with ``reason``; False when not possible."""
        if self.canceller is None or self.ended is not None:
            return False
        self.canceller(reason)
        return True

    def __repr__(self) -> str:
        return f"<Operation {self.kind} {self.name} of {self.session!r}>"
