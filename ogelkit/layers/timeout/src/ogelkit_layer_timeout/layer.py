"""The timeout layer: a gateway-side deadline per operation.

Each session has at most one ``loop.call_at`` timer (no task, no coroutine), armed for the
deadline (tier's ``statement_timeout`` plus ``grace``) of its oldest running operation and
re-armed lazily when it fires: an operation costs a deque append and pop, not a timer of its
own (creating and cancelling a TimerHandle per operation cost ~3 us). When an operation is
still running at its deadline, the layer calls ``op.cancel(Reject("timeout", ...))``: the
front door cancels the operation upstream (Postgres CancelRequest, MongoDB killOp, dropping
a Redis connection), answers the client with its protocol's timeout error (Postgres
``57014``) and keeps the server connection usable. The layer knows no protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from ogelkit import Decisions, Layer, Operation, Reason, Reject, Session, Tier, format_duration
from ogelkit_layer_timeout.options import TimeoutOptions

log = logging.getLogger("ogelkit.layer.timeout")


def _timeout(value: float | None) -> str:
    return "no statement timeout" if value is None else (
        f"a {format_duration(value)} statement timeout")


class _TierInfo:
    __slots__ = ("deadline", "detail", "hint", "message", "rejected", "tier", "uncancellable")

    def __init__(self, tier: Tier, grace: float, hint: str | None, decisions: Decisions):
        self.tier = tier
        limit = tier.statement_timeout
        self.deadline = None if limit is None else limit + grace
        shown = format_duration(limit) if limit is not None else "none"
        self.message = f"canceling statement due to the gateway's statement timeout ({shown})"
        self.detail = f"statement timeout {shown} on tier {tier.name}."
        self.hint = hint or "Break the work into shorter statements."
        self.rejected = decisions.child("rejected", Reason.TIMEOUT, tier.name)
        self.uncancellable = decisions.child("warned", "uncancellable", tier.name)


class _Watch:
    """One session's running operations, oldest first, and its single timer; also the
    session's tier and its deadline parameters (``info`` None: no deadline)."""

    __slots__ = ("handle", "info", "pending", "tier")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.pending: deque[tuple[float, Operation, _TierInfo]] = deque()
        self.tier: Tier | None = None
        self.info: _TierInfo | None = None


class Timeout(Layer[TimeoutOptions]):
    type_name = "timeout"
    batches = True  # one deadline for the whole batch
    Config = TimeoutOptions

    def __init__(self, config: TimeoutOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self._decisions = Decisions(context.metrics, name)
        self._tiers: dict[str, _TierInfo] = {}
        self._watches: set[_Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.expired = 0

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

    def reconfigure(self, options: TimeoutOptions) -> None:
        """Config reload: new options from each session's next operation (the deadlines of
        operations already running keep the ones they started with)."""
        self.config = options
        self._tiers.clear()
        for watch in self._watches:
            watch.tier = None  # recomputed, with the new options, at the next operation

    async def close(self) -> None:
        for watch in self._watches:
            if watch.handle is not None:
                watch.handle.cancel()
            watch.pending.clear()
        self._watches.clear()

    def on_operation(self, op: Operation) -> None:
        session = op.session
        watch = session.state.get(self.name)
        if watch is None or watch.tier is not session.tier:
            watch = self._watch(session)
        info = watch.info
        if info is None:
            return None
        loop = self._loop or asyncio.get_running_loop()
        due = loop.time() + info.deadline  # type: ignore[operator]
        watch.pending.append((due, op, info))
        if watch.handle is None:
            watch.handle = loop.call_at(due, self._check, watch)
        return None

    def _watch(self, session: Session) -> _Watch:
        """The session's watch, with its tier's deadline parameters (re)computed."""
        state = session.state
        watch = state.get(self.name)
        if watch is None:
            watch = state[self.name] = _Watch()
            self._watches.add(watch)
        tier = watch.tier = session.tier
        info = None
        if tier is not None:
            info = self._tiers.get(tier.name)
            if info is None or info.tier is not tier:
                info = self._tier_info(tier)
            if info.deadline is None:
                info = None
        watch.info = info
        return watch

    def on_complete(self, op: Operation) -> None:
        watch = op.session.state.get(self.name)
        if watch is None or not watch.pending:
            return
        pending = watch.pending
        if pending[0][1] is op:  # operations of a session finish in order, nearly always
            pending.popleft()
            return
        for entry in pending:
            if entry[1] is op:
                pending.remove(entry)
                return

    def on_disconnect(self, session: Session) -> None:
        watch = session.state.pop(self.name, None)
        if watch is not None:
            if watch.handle is not None:
                watch.handle.cancel()
            self._watches.discard(watch)

    def _check(self, watch: _Watch) -> None:
        """The session's timer fired: cancel what is overdue, re-arm for the next deadline."""
        watch.handle = None
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        pending = watch.pending
        while pending:
            due, op, info = pending[0]
            if due > now:
                watch.handle = loop.call_at(due, self._check, watch)
                return
            pending.popleft()
            if op.ended is None:  # ended: finished, the front door has yet to complete it
                self._expire(op, info)

    def _expire(self, op: Operation, info: _TierInfo) -> None:
        self.expired += 1
        reject = Reject(Reason.TIMEOUT, info.message, detail=info.detail, hint=info.hint,
                        layer=self.name)
        try:
            cancelled = op.cancel(reject)
        except Exception:  # a broken canceller must not break the event loop's timers
            log.exception("cancelling %r failed", op)
            cancelled = False
        if cancelled:
            info.rejected.inc()
        else:
            info.uncancellable.inc()
            log.debug("operation past its deadline cannot be cancelled: %r", op)

    def _tier_info(self, tier: Tier) -> _TierInfo:
        hint = self.context.tiers.upgrade_hint(tier, "statement_timeout", _timeout)
        info = self._tiers[tier.name] = _TierInfo(tier, self.config.grace, hint,
                                                  self._decisions)
        return info

    def describe(self) -> dict[str, Any]:
        return {"running": sum(len(w.pending) for w in self._watches), "expired": self.expired,
                "grace": self.config.grace}
