"""The cost layer: refuse operations whose estimated cost is over the tier's ceiling.

The layer knows no query language. The backend does the kind-specific work through two
capability methods: ``cost_key(op)`` normalises the statement into a hashable key (None for
statements that cannot be planned, e.g. SET, BEGIN, COMMIT: those pass untouched), and
``await estimate_cost(op)`` estimates it (Postgres: EXPLAIN). Estimates are cached per
(tenant database, key), so a repeated statement costs a dictionary lookup and is decided
synchronously; a miss asks the backend once per key however many operations wait for it
(single flight). An estimate that fails or is None means "unknown" and the operation passes.

``cost_key`` itself may cost microseconds (the Postgres backend tokenises the statement), so
the layer also remembers which key an exact statement text maps to: a statement repeated
verbatim (prepared statements, parameterised queries: most application traffic) then costs
two dictionary lookups and no call into the backend at all. This relies on ``cost_key`` being
a function of the tenant database, ``op.kind``, ``op.name`` and ``op.text`` only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Hashable
from typing import Any

from ogelkit import Capability, Decisions, Layer, Operation, Reason, Reject, Session, Tier
from ogelkit_layer_cost.cache import CostCache
from ogelkit_layer_cost.options import CostOptions

log = logging.getLogger("ogelkit.layer.cost")

#: Statements longer than this are not remembered verbatim (they still get estimates).
ALIAS_MAX_TEXT = 2048
#: Remembering texts costs when literals make every text new (pgbench -M simple, ORMs that
#: inline values): per window of this many lookups, fewer than 1 in 4 verbatim repeats stops
#: remembering new texts for ALIAS_QUIET windows, then it tries again.
ALIAS_WINDOW = 4096
ALIAS_QUIET = 8
_NO_KEY = object()  # remembered: cost_key said None (SET, BEGIN ...)

#: Failed estimates are retried after at most this long (a transient upstream error must
#: not let expensive statements through for the whole cache_ttl).
ERROR_TTL = 10.0


def _units(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


class _TierInfo:
    __slots__ = ("allowed", "ceiling", "rejected", "tier", "unknown", "warned")

    def __init__(self, tier: Tier, decisions: Decisions):
        self.tier = tier
        self.ceiling = tier.cost_ceiling
        name = tier.name
        self.allowed = decisions.child("allowed", "ok", name)
        self.unknown = decisions.child("allowed", "unknown", name)
        self.warned = decisions.child("warned", Reason.COST, name)
        self.rejected = decisions.child("rejected", Reason.COST, name)


class _Scope:
    """One session's view of the layer (``session.state[layer name]``)."""

    __slots__ = ("backend", "database", "info", "slug", "tier")

    def __init__(self, session: Session):
        self.tier = session.tier
        self.backend = session.backend
        self.slug = session.tenant_slug
        self.database = session.database
        self.info: _TierInfo | None = None


class Cost(Layer[CostOptions]):
    type_name = "cost"
    batches = True  # requests a front door batches need no estimate (O(1) commands): one decision
    Config = CostOptions

    def __init__(self, config: CostOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.cache = CostCache(config.cache_size)
        self._entries = self.cache.entries  # read directly on the hit path
        # (tenant, database, kind, name, text) -> cache key or _NO_KEY; FIFO-bounded. An
        # OrderedDict: popping the oldest of a plain dict skips every deleted slot before it.
        self._aliases: OrderedDict[tuple, Any] = OrderedDict()
        self._remember = True
        self._window = 0
        self._window_hits = 0
        self._quiet = 0
        self._tiers: dict[str, _TierInfo] = {}
        self._decisions = Decisions(context.metrics, name)
        self._capable: dict[Any, bool] = {}  # backend -> implements estimate_cost
        self._inflight: dict[Hashable, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._enforce = config.mode == "enforce"
        self.hits = 0
        self.misses = 0
        self.estimates = 0
        self.failures = 0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the decision ------------------------------------------------------------------------
    def on_operation(self, op: Operation) -> Awaitable[None] | None:
        session = op.session
        scope = session.state.get(self.name)
        if scope is None or scope.tier is not session.tier or scope.backend is not session.backend:
            scope = self._scope(session)
        info = scope.info
        if info is None:  # nothing to estimate for this session
            return None
        text = op.text
        alias = (scope.slug, scope.database, op.kind, op.name, text)
        cache_key = self._aliases.get(alias)
        self._window += 1
        if self._window >= ALIAS_WINDOW:
            self._end_window()
        if cache_key is not None:
            self._window_hits += 1
        else:
            key = scope.backend.cost_key(op)  # type: ignore[union-attr]
            cache_key = _NO_KEY if key is None else (scope.slug, scope.database, key)
            if self._remember and text is not None and len(text) <= ALIAS_MAX_TEXT:
                aliases = self._aliases
                if len(aliases) >= self.config.cache_size:
                    aliases.popitem(last=False)
                aliases[alias] = cache_key
        if cache_key is _NO_KEY:  # SET, BEGIN, COMMIT, utility statements: nothing to plan
            return None
        # op.started is "now" to within the chain's own run time: no clock read per hit.
        entry = self._entries.get(cache_key)
        if entry is None or entry[1] <= op.started:
            entry = self.cache.get(cache_key, op.started)  # drops an expired entry
        if entry is not None:
            self.hits += 1
            cost = entry[0]
            ceiling = info.ceiling
            if cost is not None and (ceiling is None or cost <= ceiling):
                op.cost = cost
                info.allowed.inc()  # the common verdict, inline
                return None
            self._decide(op, cost, info)
            return None
        self.misses += 1
        return self._wait_for_estimate(op, cache_key, info)

    def reconfigure(self, options: CostOptions) -> None:
        """Config reload: new options from each session's next operation (the estimate
        cache keeps its entries; its size and TTL apply from now on)."""
        self.config = options
        self._enforce = options.mode == "enforce"
        self._tiers.clear()
        for session in self.live_sessions():
            session.state.pop(self.name, None)

    def _scope(self, session: Session) -> _Scope:
        """What every operation of ``session`` shares, computed again when its tier (or
        backend) object changes; ``info`` None: nothing to estimate."""
        scope = _Scope(session)
        backend, tier = session.backend, session.tier
        if backend is not None and tier is not None:
            info = self._tiers.get(tier.name)
            if info is None or info.tier is not tier:
                info = self._tiers[tier.name] = _TierInfo(tier, self._decisions)
            capable = self._capable.get(backend)
            if capable is None:
                capable = self._capable[backend] = \
                    Capability.ESTIMATE_COST in backend.capabilities
            if capable and (info.ceiling is not None or self.config.estimate_unlimited):
                scope.info = info
        session.state[self.name] = scope
        return scope

    def _end_window(self) -> None:
        if self._remember:
            if self._window_hits * 4 < self._window:
                self._remember = False
                self._quiet = ALIAS_QUIET
        else:
            self._quiet -= 1
            if self._quiet <= 0:
                self._remember = True  # traffic may have changed: try again
        self._window = self._window_hits = 0

    def _decide(self, op: Operation, cost: float | None, info: _TierInfo) -> None:
        op.cost = cost
        if cost is None:
            info.unknown.inc()
            return
        ceiling = info.ceiling
        if ceiling is None or cost <= ceiling:
            info.allowed.inc()
            return
        if not self._enforce:
            info.warned.inc()
            return
        info.rejected.inc()
        raise self._reject(op, cost, info)

    # -- misses: one estimate per key, however many operations wait for it --------------------
    async def _wait_for_estimate(self, op: Operation, cache_key: Hashable,
                                 info: _TierInfo) -> None:
        fut = self._inflight.get(cache_key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._inflight[cache_key] = loop.create_future()
            task = loop.create_task(self._estimate(op, cache_key, fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            cost = await asyncio.wait_for(asyncio.shield(fut), self.config.estimate_timeout)
        except TimeoutError:
            cost = None
        self._decide(op, cost, info)

    async def _estimate(self, op: Operation, cache_key: Hashable, fut: asyncio.Future) -> None:
        backend = op.session.backend
        cost: float | None = None
        ttl = self.config.cache_ttl
        try:
            self.estimates += 1
            value = await backend.estimate_cost(op)  # type: ignore[union-attr]
            if value is not None:
                cost = float(value)
                if math.isnan(cost) or cost < 0:
                    raise ValueError(f"estimate_cost returned {value!r}")
            else:
                ttl = min(ttl, ERROR_TTL)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # any backend failure means "unknown", never a crash
            self.failures += 1
            cost, ttl = None, min(ttl, ERROR_TTL)
            log.debug("cost estimate failed: %r", exc, extra={"layer": self.name})
        finally:
            self._inflight.pop(cache_key, None)
        self.cache.put(cache_key, cost, time.monotonic() + ttl)
        if not fut.done():
            fut.set_result(cost)

    # -- helpers -----------------------------------------------------------------------------
    def _reject(self, op: Operation, cost: float, info: _TierInfo) -> Reject:
        tier = info.tier
        ceiling = info.ceiling
        assert ceiling is not None
        better = self._tier_allowing(tier, cost)
        if better is None:
            hint = "No tier allows a statement this expensive: narrow it (a WHERE clause, a " \
                   "LIMIT, an index)."
        elif better.cost_ceiling is None:
            hint = f"Upgrade to {better.name} (no cost ceiling), or narrow the statement."
        else:
            hint = (f"Upgrade to {better.name} (cost ceiling {_units(better.cost_ceiling)}), "
                    f"or narrow the statement.")
        return Reject(Reason.COST,
                      f"estimated cost {_units(cost)} exceeds the cost ceiling of tier "
                      f"{tier.name}",
                      detail=f"estimated cost {_units(cost)}, ceiling {_units(ceiling)} on tier "
                             f"{tier.name}.",
                      hint=hint, layer=self.name)

    def _tier_allowing(self, tier: Tier, cost: float) -> Tier | None:
        """The smallest tier above ``tier`` whose ceiling admits ``cost``."""
        for candidate in self.context.tiers.values():
            if candidate.rank <= tier.rank:
                continue
            if candidate.cost_ceiling is None or candidate.cost_ceiling >= cost:
                return candidate
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": self.config.mode, "cached": len(self.cache),
                "statements_remembered": len(self._aliases), "remembering": self._remember,
                "hits": self.hits,
                "misses": self.misses, "estimates": self.estimates, "failures": self.failures,
                "in_flight": len(self._inflight)}
