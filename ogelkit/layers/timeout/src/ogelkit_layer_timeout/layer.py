"""The timeout layer: a gateway-side deadline per operation.

``on_operation`` arms one ``loop.call_later`` timer (no task, no coroutine) for the tier's
``statement_timeout`` plus ``grace``; ``on_complete`` cancels it. When it fires first, the
layer calls ``op.cancel(Reject("timeout", ...))``: the front door cancels the operation
upstream (Postgres CancelRequest, MongoDB killOp, dropping a Redis connection), answers the
client with its protocol's timeout error (Postgres ``57014``) and keeps the server connection
usable. The layer knows no protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ogelkit import Layer, Operation, Reason, Reject
from ogelkit.tiers import Tier
from ogelkit.units import format_duration
from ogelkit_layer_timeout.decisions import Decisions
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


class Timeout(Layer):
    type_name = "timeout"
    Config = TimeoutOptions

    def __init__(self, config: TimeoutOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.config: TimeoutOptions = config
        self._decisions = Decisions(context.metrics, name)
        self._tiers: dict[str, _TierInfo] = {}
        self._timers: dict[Operation, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.expired = 0

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def on_operation(self, op: Operation) -> None:
        tier = op.session.tier
        if tier is None:
            return None
        info = self._tiers.get(tier.name)
        if info is None or info.tier is not tier:
            info = self._tier_info(tier)
        if info.deadline is None:
            return None
        loop = self._loop or asyncio.get_running_loop()
        self._timers[op] = loop.call_later(info.deadline, self._expire, op, info)
        return None

    def on_complete(self, op: Operation) -> None:
        handle = self._timers.pop(op, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, op: Operation, info: _TierInfo) -> None:
        self._timers.pop(op, None)
        if op.ended is not None:  # finished, the front door just has not completed it yet
            return
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
        return {"running": len(self._timers), "expired": self.expired,
                "grace": self.config.grace}
