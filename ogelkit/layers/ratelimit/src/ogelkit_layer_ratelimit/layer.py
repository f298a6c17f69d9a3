"""The ratelimit layer: operations per second with burst, per tenant, GCRA.

Without ``[state]`` each decision is a dictionary lookup and a few float operations in this
process, taken synchronously (``on_operation`` returns None: no task, no coroutine). With
``[state]`` the decision is made in Redis (``redis_bucket.py``), so every replica shares the
tenant's one bucket; ``on_operation`` then returns a future settled by the batched round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import Any

from ogelkit import Decisions, Layer, Operation, OutagePolicy, Reason, Reject, Session, Tier
from ogelkit_layer_ratelimit.gcra import _EPSILON, LocalBuckets
from ogelkit_layer_ratelimit.options import RatelimitOptions
from ogelkit_layer_ratelimit.redis_bucket import STATE_ERRORS, RedisBuckets

log = logging.getLogger("ogelkit.layer.ratelimit")

PURGE_INTERVAL = 60.0


def batch_cells(interval: Any, tolerance: Any, n: int) -> tuple[Any, Any]:
    """GCRA parameters of a batch of ``n`` requests (``Operation.count``) taken as one
    decision: admitted when its first request would be, and charged ``n`` cells. The rate
    holds exactly over time (the bucket owes what a batch took beyond the burst, and the
    tenant's next requests pay it); a burst may be exceeded by less than one batch (a
    batch is one read's worth of pipelined requests). Requiring the whole batch to fit
    instead would refuse a batch bigger than the burst forever."""
    step = interval * n
    return step, tolerance + step - interval
#: Credits (tokens prefetched from Redis) not used within this long are dropped, so an idle
#: replica cannot save them up and add them to a later burst.
CREDIT_TTL = 0.1
MAX_PREFETCH = 10_000


def _resolve(fut: asyncio.Future, value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


def _delay(seconds: float) -> asyncio.Future:
    """An awaitable that completes after ``seconds``: a timer, not a task or a coroutine."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(seconds, _resolve, fut, None)
    return fut


def _ops(value: float | None) -> str:
    return "unlimited operations per second" if value is None else (
        f"{value:g} operations per second")


class _TierInfo:
    """Everything a decision needs about one tier, computed once: GCRA parameters, the
    Prometheus label children and the upgrade hint."""

    __slots__ = ("allowed", "allowed_down", "burst", "delayed", "interval", "interval_us",
                 "prefetch", "rate", "rejected", "rejected_down", "tier", "tolerance",
                 "tolerance_us", "upgrade")

    def __init__(self, tier: Tier, decisions: Decisions, upgrade: str | None,
                 prefetch: float = 0.0):
        self.tier = tier
        self.rate = tier.ops_per_second
        if self.rate is None or self.rate <= 0:
            self.rate = None
            self.interval = self.tolerance = 0.0
            self.burst = 0
        else:
            burst = tier.burst if tier.burst is not None else math.ceil(self.rate)
            self.burst = max(1, burst)
            self.interval = 1.0 / self.rate
            self.tolerance = self.burst * self.interval
        # Redis's clock has 1 µs resolution: the shared bucket tops out at 1,000,000/s.
        self.interval_us = max(1, round(self.interval * 1_000_000)) if self.rate else 0
        self.tolerance_us = self.burst * self.interval_us
        self.prefetch = 0 if self.rate is None else min(
            int(self.rate * prefetch), self.burst // 4, MAX_PREFETCH)
        self.upgrade = upgrade
        name = tier.name
        self.allowed = decisions.child("allowed", "ok", name)
        self.allowed_down = decisions.child("allowed", "state_down", name)
        self.delayed = decisions.child("delayed", Reason.RATE, name)
        self.rejected = decisions.child("rejected", Reason.RATE, name)
        self.rejected_down = decisions.child("rejected", Reason.UNAVAILABLE, name)


class _Scope:
    """One session's view of the layer (``session.state[layer name]``)."""

    __slots__ = ("info", "key", "tenant", "tier")

    def __init__(self, session: Session):
        self.tier = session.tier
        self.tenant = session.tenant
        self.info: _TierInfo | None = None
        self.key = ""


class Ratelimit(Layer[RatelimitOptions]):
    type_name = "ratelimit"
    batches = True  # a batch takes op.count cells
    Config = RatelimitOptions

    def __init__(self, config: RatelimitOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self._local = LocalBuckets()
        self._tats = self._local.tat  # read directly on the admit-now path (same dict)
        self._tiers: dict[str, _TierInfo] = {}
        self._decisions = Decisions(context.metrics, name)
        self._policy = OutagePolicy(name, config.state_down, context.metrics)
        self._max_delay = config.max_delay if config.mode == "delay" else -1.0
        self._per_db = config.scope == "database"
        self._redis: RedisBuckets | None = None
        self._down_until = 0.0  # monotonic time until which Redis is not tried again
        self._down_exc: BaseException | None = None
        self._credits: dict[str, list[float]] = {}  # key -> [tokens left, expires]

    def reconfigure(self, options: RatelimitOptions) -> None:
        """Config reload: mode, delay, scope, outage policy, retry and prefetch take effect
        from each session's next operation; the buckets keep their fill."""
        if options.key_prefix != self.config.key_prefix:
            raise ValueError("key_prefix names where the shared buckets live: restart to change it")
        self.config = options
        self._policy = OutagePolicy(self.name, options.state_down, self.context.metrics)
        self._max_delay = options.max_delay if options.mode == "delay" else -1.0
        self._per_db = options.scope == "database"
        if self._redis is not None:
            self._redis.set_max_delay(self._max_delay)
        self._tiers.clear()
        for session in self.live_sessions():
            session.state.pop(self.name, None)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        client = self.context.state()
        if client is None:
            return
        self._redis = RedisBuckets(client, f"{self.config.key_prefix}rl:", self._max_delay,
                                   self._settle, self._failed, self._credit)
        try:
            await self._redis.load()
        except STATE_ERRORS as exc:  # not fatal: each operation applies the policy
            log.warning("shared state unavailable at startup: %s", exc,
                        extra={"layer": self.name, "policy": self.config.state_down})

    async def run(self) -> None:
        """Forget in-process buckets that are full again, so idle tenants cost no memory."""
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            now = time.monotonic()
            self._local.purge(now)
            for key in [k for k, c in self._credits.items() if c[1] <= now]:
                del self._credits[key]

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    # -- the decision ------------------------------------------------------------------------
    def on_operation(self, op: Operation) -> Awaitable[None] | None:
        session = op.session
        scope = session.state.get(self.name)
        if scope is None or scope.tier is not session.tier or scope.tenant is not session.tenant:
            scope = self._scope(session)
        info = scope.info
        if info is None:
            return None
        if info.rate is None:
            info.allowed.inc()
            return None
        key = scope.key
        redis = self._redis
        n = op.count
        if redis is None:
            # GCRA admit-now, inline (LocalBuckets.take's first branch): the common case
            # costs no call; anything else goes through take() with the same clock reading.
            if n > 1:
                wait = self._local_wait(info, key, session, info.allowed, None, n)
                return None if wait == 0.0 else _delay(wait)
            now = time.monotonic()
            tats = self._tats
            tat = tats.get(key, now)
            if tat < now:
                tat = now
            new = tat + info.interval
            if new - now - info.tolerance <= _EPSILON:
                tats[key] = new
                info.allowed.inc()
                return None
            wait = self._local_wait(info, key, session, info.allowed, now)
            return None if wait == 0.0 else _delay(wait)
        credit = self._credits.get(key)
        if credit is not None and credit[0] >= n and credit[1] > time.monotonic():
            credit[0] -= n  # tokens this replica already took from Redis
            info.allowed.inc()
            return None
        if self._down_until:
            if time.monotonic() < self._down_until:
                wait = self._down_wait(info, key, session, self._down_exc, n)  # type: ignore[arg-type]
                return None if wait == 0.0 else _delay(wait)
            self._down_until = 0.0  # try Redis again
        if n > 1:
            interval_us, tolerance_us = batch_cells(info.interval_us, info.tolerance_us, n)
            # No credits on a batch's entry: the script sizes them with its tolerance.
            return redis.submit(key, interval_us, tolerance_us, (info, key, session), 0)
        return redis.submit(key, info.interval_us, info.tolerance_us, (info, key, session),
                            info.prefetch)

    def _scope(self, session: Session) -> _Scope:
        """What every operation of ``session`` shares (its tier's parameters and its bucket
        key), kept in ``session.state`` and computed again when the tier (or tenant record)
        object changes."""
        scope = _Scope(session)
        tier, tenant = session.tier, session.tenant
        if tier is not None and tenant is not None:
            info = self._tiers.get(tier.name)
            if info is None or info.tier is not tier:
                info = self._tier_info(tier)
            scope.info = info
            scope.key = f"{tenant.slug}/{session.database}" if self._per_db else tenant.slug
        session.state[self.name] = scope
        return scope

    def _local_wait(self, info: _TierInfo, key: str, session: Session, allowed: Any,
                    now: float | None = None, n: int = 1) -> float:
        interval, tolerance = info.interval, info.tolerance
        if n > 1:
            interval, tolerance = batch_cells(interval, tolerance, n)
        wait = self._local.take(key, interval, tolerance, self._max_delay,
                                time.monotonic() if now is None else now)
        if wait == 0.0:
            allowed.inc()
            return 0.0
        if wait > 0.0:
            info.delayed.inc()
            return wait
        info.rejected.inc()
        raise self._reject(info, session, -wait)

    def _down_wait(self, info: _TierInfo, key: str, session: Session,
                   exc: BaseException, n: int = 1) -> float:
        try:
            self._policy.failed(exc)  # logs once per episode, counts, raises when closed
        except Reject:
            info.rejected_down.inc()
            raise
        return self._local_wait(info, key, session, info.allowed_down, n=n)

    # -- callbacks of the Redis batcher -------------------------------------------------------
    def _settle(self, fut: asyncio.Future, context: tuple[_TierInfo, str, Session],
                result_us: int) -> None:
        info, _, session = context
        if self._policy.down_since is not None:
            self._policy.succeeded()
        if result_us == 0:
            info.allowed.inc()
            _resolve(fut)
        elif result_us > 0:
            info.delayed.inc()
            if not fut.done():
                fut.get_loop().call_later(result_us / 1_000_000, _resolve, fut, None)
        else:
            info.rejected.inc()
            if not fut.done():
                fut.set_exception(self._reject(info, session, -result_us / 1_000_000))

    def _credit(self, key: str, granted: int) -> None:
        if granted <= 0:
            return
        now = time.monotonic()
        credit = self._credits.get(key)
        left = credit[0] if credit is not None and credit[1] > now else 0
        self._credits[key] = [left + granted, now + CREDIT_TTL]

    def _failed(self, fut: asyncio.Future, context: tuple[_TierInfo, str, Session],
                exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.config.state_retry
        self._down_exc = exc
        info, key, session = context
        try:
            wait = self._down_wait(info, key, session, exc)
        except Reject as rej:
            if not fut.done():
                fut.set_exception(rej)
            return
        if wait == 0.0:
            _resolve(fut)
        elif not fut.done():
            fut.get_loop().call_later(wait, _resolve, fut, None)

    # -- helpers -----------------------------------------------------------------------------
    def _tier_info(self, tier: Tier) -> _TierInfo:
        upgrade = self.context.tiers.upgrade_hint(tier, "ops_per_second", _ops)
        prefetch = self.config.prefetch if self._redis is not None else 0.0
        info = self._tiers[tier.name] = _TierInfo(tier, self._decisions, upgrade, prefetch)
        return info

    def _reject(self, info: _TierInfo, session: Session, retry: float) -> Reject:
        ms = max(1, math.ceil(retry * 1000))
        slug = session.tenant_slug
        scope = (f'database "{session.database}" of tenant "{slug}"' if self._per_db
                 else f'tenant "{slug}"')
        hint = f"Retry after {ms} ms."
        if info.upgrade:
            hint += f" {info.upgrade}"
        return Reject(Reason.RATE, f"rate limit exceeded for {scope}",
                      detail=f"limit {info.rate:g} operations per second with bursts of "
                             f"{info.burst} on tier {info.tier.name}.",
                      hint=hint, retry_after=ms / 1000, layer=self.name)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": "redis" if self._redis is not None else "local",
                               "decision": self.config.mode, "scope": self.config.scope,
                               "local_buckets": len(self._local.tat)}
        if self._redis is not None:
            out["redis_calls"] = self._redis.calls
            out["credits"] = int(sum(c[0] for c in self._credits.values()))
            out.update(self._policy.describe())
        return out
