"""The ``Layer`` contract: one of the O7s layers (gatekeeper, ratelimit, ... or a third party's).

A layer implements only the phases it cares about; the chain is compiled once at startup
from the methods a subclass actually overrides, so an unused phase costs nothing per request.

Phases, in the order a connection lives through them:

``on_auth(session)``        before credentials are checked (tenant claimed, not proven);
                            sync; raise ``Reject`` to refuse (bans).
``on_connect(session)``     after authentication and routing; async; raise ``Reject`` to
                            refuse (connection caps, queueing).
``on_operation(op)``        before each request goes upstream; returns ``None`` (admit now)
                            or an awaitable (admit later, e.g. after a Redis round trip or a
                            delay); raise ``Reject`` to refuse.
``on_complete(op)``         after each request, *always*, also when it was rejected (the
                            log phase, as in Kong): metering, learning, timers.
``on_disconnect(session)``  after the connection ends, *always*, also when it was refused.
``on_tier_change(session)`` when the tenant's tier changed while the session is open.

A rejection short-circuits the access phases (``on_auth``, ``on_connect``, ``on_operation``)
but the log phases (``on_complete``, ``on_disconnect``) still run on every layer, so usage and
intelligence see every decision. Check ``op.rejection`` / ``session.rejection`` there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ogelkit.component import Component, NoOptions, OptionsT, overridden

if TYPE_CHECKING:
    from ogelkit.model import Operation, Session

__all__ = ["Layer", "NoOptions"]


class Layer(Component[OptionsT]):
    """Base class for layers. Subclasses set ``type_name`` and ``Config`` (an attrs class)."""

    #: Phases this class overrides; filled in by ``__init_subclass__``.
    phases: ClassVar[frozenset[str]] = frozenset()

    #: True when ``on_operation``/``on_complete`` handle a batch (``Operation.count`` > 1:
    #: pipelined requests admitted and completed as one unit). A front door batches only
    #: when every layer of the chain that has either phase says so; a layer that needs to
    #: see each request leaves this False and gets one operation per request (each costs
    #: a trip through the whole chain). See docs/dev/performance.md.
    batches: ClassVar[bool] = False

    PHASES: ClassVar[tuple[str, ...]] = (
        "on_auth", "on_connect", "on_operation", "on_complete", "on_disconnect", "on_tier_change",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.phases = overridden(cls, Layer, Layer.PHASES)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect to shared state, start background work. Called once before serving."""

    async def run(self) -> None:
        """Optional long-running task (flushers, samplers); cancelled at shutdown."""

    async def close(self) -> None:
        """Flush and release everything. Called once at shutdown, after the drain."""

    # -- phases ------------------------------------------------------------------------------
    def on_auth(self, session: Session) -> None:
        """Before credentials are checked. Raise ``Reject`` to refuse."""

    async def on_connect(self, session: Session) -> None:
        """After authentication. Raise ``Reject`` to refuse the connection."""

    def on_operation(self, op: Operation) -> Awaitable[None] | None:
        """Before an operation goes upstream. ``None`` admits it at once."""
        return None

    def on_complete(self, op: Operation) -> None:
        """After every operation, rejected ones included."""

    def on_disconnect(self, session: Session) -> None:
        """After every connection, refused ones included."""

    def on_tier_change(self, session: Session) -> None:
        """The session's tier changed (``session.tier`` already holds the new one)."""

    # -- config reload -----------------------------------------------------------------------
    def reconfigure(self, options: Any) -> None:
        """Optional: take new validated options without a restart (``SIGHUP`` or
        ``POST /admin/reload``; live sessions keep running). A layer that does not override
        this has its option changes reported as needing a restart. Tier values need no
        reconfigure: the gateway applies new tiers itself and calls ``on_tier_change``."""
        raise NotImplementedError

    def live_sessions(self) -> Iterator[Session]:
        """Every session the gateway serves right now (a ``reconfigure`` recomputes what it
        keeps per session)."""
        sessions = self.context.sessions
        for slug in sessions.tenants():
            yield from sessions.of(slug)

    # -- introspection ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Layer state for the admin API (counts, bans, cache size ...)."""
        return {}
