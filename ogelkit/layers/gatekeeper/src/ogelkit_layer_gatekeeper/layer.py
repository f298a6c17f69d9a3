"""The gatekeeper layer: concurrent client connections per tenant (or tenant database).

At the tier's cap (``tier.connections``; None = unlimited) a new connection is refused at
once, or waits up to the queue time for a slot and is refused when none frees up. Without
``[state]`` the count lives in this process and a freed slot is handed to the longest
waiting client (FIFO, no barging). With ``[state]`` it lives in Redis as leases
(``leases.py``) shared by every replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from ogelkit import Decisions, Layer, OutagePolicy, Reason, Reject, Session, Tier, format_duration
from ogelkit_layer_gatekeeper.leases import STATE_ERRORS, RedisLeases
from ogelkit_layer_gatekeeper.options import GatekeeperOptions

log = logging.getLogger("ogelkit.layer.gatekeeper")


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _connections(value: int | None) -> str:
    return "unlimited connections" if value is None else f"{value} connections"


class _Slots:
    """In-process count of one tenant's connections and its FIFO of waiting clients."""

    __slots__ = ("count", "waiters")

    def __init__(self) -> None:
        self.count = 0
        self.waiters: deque[asyncio.Future[bool]] = deque()


class Gatekeeper(Layer[GatekeeperOptions]):
    type_name = "gatekeeper"
    Config = GatekeeperOptions

    def __init__(self, config: GatekeeperOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self._leases: RedisLeases | None = None
        self._policy = OutagePolicy(name, config.state_down, context.metrics)
        self._decisions = Decisions(context.metrics, name)
        # in-process mode
        self._slots: dict[str, _Slots] = {}
        # shared mode: this replica's leases, its queued clients and their wake-ups
        self._held: dict[str, set[str]] = {}
        self._queued: dict[str, int] = {}
        self._wakeups: dict[str, list[asyncio.Future]] = {}
        self._releases: set[asyncio.Task] = set()

    def reconfigure(self, options: GatekeeperOptions) -> None:
        """Config reload: queueing, lease TTL and outage policy take effect for the next
        connection; the live connections keep their slots."""
        for fixed in ("per_database", "key_prefix"):  # what the held slots are counted by
            if getattr(options, fixed) != getattr(self.config, fixed):
                raise ValueError(f"{fixed} keys the connections already counted: restart "
                                 "to change it")
        self.config = options
        self._policy = OutagePolicy(self.name, options.state_down, self.context.metrics)
        if self._leases is not None:
            self._leases.set_ttl(options.lease_ttl)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        client = self.context.state()
        if client is None:
            return
        self._leases = RedisLeases(client, self.config.key_prefix, self.config.lease_ttl)
        try:
            await self._leases.load()
        except STATE_ERRORS as exc:  # not fatal: every connection applies the policy
            log.warning("shared state unavailable at startup: %s", exc,
                        extra={"layer": self.name, "policy": self.config.state_down})

    async def run(self) -> None:
        """Refresh this replica's leases every ``lease_ttl / 3``."""
        if self._leases is None:
            return
        interval = self.config.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            await self.heartbeat()

    async def heartbeat(self) -> bool:
        """Extend (or re-create, after an outage) every lease held here; False on failure."""
        if self._leases is None:
            return True
        try:
            await self._leases.refresh(self._held)
        except STATE_ERRORS as exc:
            log.debug("lease refresh failed: %s", exc)
            return False
        self._policy.succeeded()
        return True

    async def close(self) -> None:
        if self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)

    # -- phases ------------------------------------------------------------------------------
    async def on_connect(self, session: Session) -> None:
        tier = session.tier
        if session.tenant is None or tier is None:
            return
        key = self._key(session)
        if self._leases is None:
            await self._admit_local(session, key, tier)
        else:
            await self._admit_shared(session, key, tier)

    def on_disconnect(self, session: Session) -> None:
        held = session.state.pop(self.name, None)
        if held is None:  # refused, or never got as far as this layer
            return
        if self._leases is None:
            self._release_local(held)
            return
        key, member = held
        members = self._held.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._held[key]
        self._release_remote(key, member)

    # -- in-process mode ---------------------------------------------------------------------
    async def _admit_local(self, session: Session, key: str, tier: Tier) -> None:
        limit = tier.connections
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots()
        if limit is None or (slots.count < limit and not slots.waiters):
            slots.count += 1
            session.state[self.name] = key
            self._decisions.count("allowed", "ok", tier.name)
            return
        wait = self._queue_time(tier)
        if wait <= 0 or len(slots.waiters) >= self.config.queue_limit:
            self._forget_if_idle(key, slots)
            self._refuse(session, tier, slots.count, limit, 0.0)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        slots.waiters.append(fut)
        self._decisions.count("queued", Reason.CONNECTIONS, tier.name)
        timer = loop.call_later(wait, _resolve, fut, False)
        try:
            granted = await fut
        except asyncio.CancelledError:
            # The client went away while queued; a slot handed over meanwhile goes on.
            if fut.done() and not fut.cancelled() and fut.result():
                self._release_local(key)
            raise
        finally:
            timer.cancel()
            if fut in slots.waiters:
                slots.waiters.remove(fut)
        if not granted:
            self._forget_if_idle(key, slots)
            self._refuse(session, tier, slots.count, limit, wait)
        session.state[self.name] = key
        self._decisions.count("allowed", "queued", tier.name)

    def _release_local(self, key: str) -> None:
        slots = self._slots.get(key)
        if slots is None:
            return
        while slots.waiters:
            fut = slots.waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # hand the slot over: the count stays the same
                return
        slots.count -= 1
        self._forget_if_idle(key, slots)

    def _forget_if_idle(self, key: str, slots: _Slots) -> None:
        if slots.count <= 0 and not slots.waiters:
            self._slots.pop(key, None)

    # -- shared mode (Redis leases) ----------------------------------------------------------
    async def _admit_shared(self, session: Session, key: str, tier: Tier) -> None:
        assert self._leases is not None
        limit = tier.connections
        member = f"{self.context.gateway_id}/{session.id}"
        if limit is None:
            # No cap to check: no round trip, and no dependence on Redis being up. The lease
            # reaches Redis with the next heartbeat, so the count is right after a downgrade.
            self._held.setdefault(key, set()).add(member)
            session.state[self.name] = (key, member)
            self._decisions.count("allowed", "ok", tier.name)
            return
        loop = asyncio.get_running_loop()
        wait = self._queue_time(tier)
        deadline = loop.time() + wait
        queued = False
        try:
            while True:
                reason = "queued" if queued else "ok"
                try:
                    taken, current = await self._leases.acquire(key, member, limit)
                except asyncio.CancelledError:
                    self._release_remote(key, member)  # the script may have run
                    raise
                except STATE_ERRORS as exc:
                    try:
                        self._policy.failed(exc)
                    except Reject:
                        self._decisions.count("rejected", Reason.UNAVAILABLE, tier.name)
                        raise
                    # Failing open: this replica's own count still enforces the cap here.
                    current = len(self._held.get(key, ()))
                    taken = current < limit
                    reason = "state_down"
                else:
                    self._policy.succeeded()
                if taken:
                    self._held.setdefault(key, set()).add(member)
                    session.state[self.name] = (key, member)
                    self._decisions.count("allowed", reason, tier.name)
                    return
                remaining = deadline - loop.time()
                if not queued:
                    if remaining <= 0 or self._queued.get(key, 0) >= self.config.queue_limit:
                        self._refuse(session, tier, current, limit, 0.0)
                    queued = True
                    self._queued[key] = self._queued.get(key, 0) + 1
                    self._decisions.count("queued", Reason.CONNECTIONS, tier.name)
                elif remaining <= 0:
                    self._refuse(session, tier, current, limit, wait)
                await self._sleep(loop, key, min(self.config.queue_poll, remaining))
        finally:
            if queued:
                left = self._queued[key] - 1
                if left:
                    self._queued[key] = left
                else:
                    del self._queued[key]

    async def _sleep(self, loop: asyncio.AbstractEventLoop, key: str, seconds: float) -> None:
        """Sleep ``seconds`` or until a client of this replica frees a slot of ``key``."""
        fut = loop.create_future()
        waiting = self._wakeups.setdefault(key, [])
        waiting.append(fut)
        timer = loop.call_later(seconds, _resolve, fut, None)
        try:
            await fut
        finally:
            timer.cancel()
            waiting.remove(fut)
            if not waiting:
                del self._wakeups[key]

    def _release_remote(self, key: str, member: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (interpreter shutdown): the lease simply expires
            return
        task = loop.create_task(self._drop_lease(key, member))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _drop_lease(self, key: str, member: str) -> None:
        assert self._leases is not None
        try:
            await self._leases.release(key, member)
        except STATE_ERRORS as exc:  # the lease expires by itself within lease_ttl
            log.debug("lease release failed: %s", exc)
        for fut in self._wakeups.get(key, ()):
            _resolve(fut, None)

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, session: Session) -> str:
        slug = session.tenant.slug  # type: ignore[union-attr]
        return f"{slug}/{session.database}" if self.config.per_database else slug

    def _queue_time(self, tier: Tier) -> float:
        queue = self.config.queue
        return tier.connection_queue if queue == "tier" else queue

    def _refuse(self, session: Session, tier: Tier, current: int, limit: int | None,
                waited: float) -> None:
        self._decisions.count("rejected", Reason.CONNECTIONS, tier.name)
        slug = session.tenant_slug
        scope = (f'database "{session.database}" of tenant "{slug}"' if self.config.per_database
                 else f'tenant "{slug}"')
        detail = f"{current}/{limit} connections in use on tier {tier.name}"
        if waited > 0:
            detail += f"; waited {format_duration(waited)} for a free slot"
        hint = (self.context.tiers.upgrade_hint(tier, "connections", _connections)
                or "Close idle connections, or pool them in the application.")
        raise Reject(Reason.CONNECTIONS, f"too many connections for {scope}",
                     detail=detail + ".", hint=hint, layer=self.name)

    # -- introspection -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        if self._leases is None:
            return {"mode": "local", "tenants": len(self._slots),
                    "connections": sum(s.count for s in self._slots.values()),
                    "queued": sum(len(s.waiters) for s in self._slots.values())}
        return {"mode": "redis", "tenants": len(self._held),
                "connections": sum(len(m) for m in self._held.values()),
                "queued": sum(self._queued.values()), "lease_ttl": self.config.lease_ttl,
                **self._policy.describe()}
