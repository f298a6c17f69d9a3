"""The O7s layer chain, compiled once at startup into flat tuples of bound methods.

No pluggy call and no per-layer ``isinstance``/``hasattr`` happens per request: each phase
iterates only the layers that implement it. ``admit`` stays synchronous until a layer needs
to wait, so the common path creates no coroutine and no task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from ogelkit.audit import AuditLog, operation_refused
from ogelkit.livestats import LiveStats
from ogelkit.model import Reject

if TYPE_CHECKING:
    from ogelkit.layer import Layer
    from ogelkit.model import Operation, Session

log = logging.getLogger("ogelkit.chain")


def _after(hooks: tuple, fn: object) -> int:
    """Index of the hook after ``fn`` (found by identity; only on the asynchronous path)."""
    for i, hook in enumerate(hooks):
        if hook is fn:
            return i + 1
    raise ValueError(fn)


class Chain:
    __slots__ = (
        "_auth", "_complete", "_connect", "_disconnect", "_operation", "_operation_names",
        "_tier_change", "audit", "batches", "layers", "live",
    )

    def __init__(self, layers: Sequence[Layer], audit: AuditLog | None = None,
                 live: LiveStats | None = None):
        self.layers = tuple(layers)
        self.audit = audit
        self.live = live

        def bound(phase: str):
            return tuple(
                (layer.name, getattr(layer, phase)) for layer in self.layers
                if phase in layer.phases
            )

        self._auth = bound("on_auth")
        self._connect = bound("on_connect")
        self._operation = tuple(fn for _, fn in bound("on_operation"))
        # Which layer refused an operation, filled in on the refusal path only.
        self._operation_names = tuple(name for name, _ in bound("on_operation"))
        self._complete = tuple(fn for _, fn in bound("on_complete"))
        self._disconnect = bound("on_disconnect")
        self._tier_change = bound("on_tier_change")
        # Front doors may admit pipelined requests as one Operation (count > 1) only when
        # every layer that looks at operations can take one.
        self.batches = all(layer.batches for layer in self.layers
                           if "on_operation" in layer.phases or "on_complete" in layer.phases)

    # -- connection phases -------------------------------------------------------------------
    def auth(self, session: Session) -> None:
        """Pre-authentication checks. Raises ``Reject`` (and records it on the session)."""
        for name, fn in self._auth:
            try:
                fn(session)
            except Reject as rej:
                rej.layer = rej.layer or name
                session.rejection = rej
                raise

    async def connect(self, session: Session) -> None:
        """Connection admission. Raises ``Reject`` (and records it on the session)."""
        for name, fn in self._connect:
            try:
                await fn(session)
            except Reject as rej:
                rej.layer = rej.layer or name
                session.rejection = rej
                raise

    def disconnect(self, session: Session) -> None:
        """Log phase of a connection: every layer, whatever happened before."""
        for name, fn in self._disconnect:
            try:
                fn(session)
            except Exception:  # a broken observer must not break the others
                log.exception("layer %s failed in on_disconnect", name)

    def tier_changed(self, session: Session) -> None:
        for name, fn in self._tier_change:
            try:
                fn(session)
            except Exception:
                log.exception("layer %s failed in on_tier_change", name)

    # -- operation phases --------------------------------------------------------------------
    def admit(self, op: Operation) -> Awaitable[None] | None:
        """Run the access phase. ``None``: admitted now. Awaitable: await it, then admitted.

        A refusal raises ``Reject`` (synchronously, or from the awaitable) with
        ``op.rejection`` set; the caller answers the client and still calls ``complete``.
        """
        hooks = self._operation
        fn = None
        try:  # one handler for the whole loop: a try block costs nothing until it catches
            for fn in hooks:
                pending = fn(op)
                if pending is not None:
                    return self._admit_rest(op, pending, _after(hooks, fn))
        except Reject as rej:
            if rej.layer is None and fn is not None:
                rej.layer = self._operation_names[_after(hooks, fn) - 1]
            op.rejection = rej
            raise
        return None

    async def try_admit(self, op: Operation) -> Reject | None:
        """``admit`` for callers off the hot path (HTTP calls, Studio's console, the Convex
        socket): awaits what needs awaiting and returns a refusal instead of raising it,
        with ``op.rejection`` and ``op.ended`` set. The caller still calls ``complete``."""
        try:
            pending = self.admit(op)
            if pending is not None:
                await pending
        except Reject as rej:
            op.rejection = op.rejection or rej
            op.ended = time.monotonic()
            return rej
        return None

    async def _admit_rest(self, op: Operation, pending: Awaitable[None], start: int) -> None:
        hooks = self._operation
        i = start - 1  # the layer whose awaitable is pending
        try:
            await pending
            for i in range(start, len(hooks)):
                more = hooks[i](op)
                if more is not None:
                    await more
        except Reject as rej:
            if rej.layer is None:
                rej.layer = self._operation_names[i]
            op.rejection = rej
            raise

    def complete(self, op: Operation) -> None:
        """Log phase of an operation: every layer, rejected operations included (and those
        go to the audit log)."""
        if op.rejection is not None and self.audit is not None:
            operation_refused(self.audit, op)
        if self.live is not None:
            self.live.complete(op)
        for fn in self._complete:
            try:
                fn(op)
            except Exception:
                log.exception("layer failed in on_complete for %r", op)

    def __len__(self) -> int:
        return len(self.layers)
