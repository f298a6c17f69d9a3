"""Upstream connections per credential set: a few shared (multiplexed) connections per
protocol version, plus idle dedicated connections kept for reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ogelkit import Reason, Reject
from ogelkit_redis.upstream import Upstream, UpstreamError, open_upstream

if TYPE_CHECKING:
    from ogelkit_redis.backend import RedisBackend

IDLE_DEDICATED = 4  # idle dedicated connections kept per pool and protocol


class Pools:
    def __init__(self, backend: RedisBackend, *, user: str | None, password: str | None,
                 shared: int, max_dedicated: int | None, label: str):
        self.backend = backend
        self.user = user
        self.password = password
        self.size = max(1, shared)
        self.max_dedicated = max_dedicated
        self.label = label
        self.shared: dict[int, list[Upstream | None]] = {2: [None] * self.size,
                                                         3: [None] * self.size}
        self._connecting: dict[tuple[int, int], asyncio.Future[Upstream]] = {}
        self.idle: dict[int, list[Upstream]] = {2: [], 3: []}
        self.dedicated = 0  # dedicated connections in use or idle
        # Clients per shared connection index: a connection with one client writes each
        # command at once (nothing to batch with), one with several batches per loop turn.
        self.attached = [0] * self.size
        self.closed = False
        self.closed_reason = Reject(Reason.SHUTDOWN, "the gateway is shutting down")
        self.repair: Callable[[], Awaitable[None]] | None = None

    def attach(self) -> int:
        """Pick the shared connection with the fewest clients for a new client."""
        index = min(range(self.size), key=self.attached.__getitem__)
        self.attached[index] += 1
        return index

    def detach(self, index: int) -> None:
        if self.attached[index] > 0:
            self.attached[index] -= 1

    async def _open(self, proto: int, *, dedicated: bool, index: int = -1) -> Upstream:
        b = self.backend
        try:
            up = await open_upstream(self, b.host, b.port, proto, user=self.user,
                                     password=self.password, db=b.db,
                                     connect_timeout=b.config.connect_timeout,
                                     dedicated=dedicated)
        except UpstreamError as exc:
            # A Redis restarted without an ACL file forgets the tenant users: put the user
            # back (provisioning is idempotent and deterministic) and try once more.
            if self.repair is None or "WRONGPASS" not in str(exc):
                raise
            await self.repair()
            up = await open_upstream(self, b.host, b.port, proto, user=self.user,
                                     password=self.password, db=b.db,
                                     connect_timeout=b.config.connect_timeout,
                                     dedicated=dedicated)
        b.metrics_upstream(+1, dedicated)
        up.attached = self.attached
        up.index = index
        return up

    # -- shared ----------------------------------------------------------------------------
    def shared_now(self, proto: int, index: int) -> Upstream | None:
        up = self.shared[proto][index]
        if up is not None and not up.closed:
            return up
        return None

    async def get_shared(self, proto: int, index: int) -> Upstream:
        up = self.shared_now(proto, index)
        if up is not None:
            return up
        if self.closed:
            raise self.closed_reason
        key = (proto, index)
        fut = self._connecting.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._open(proto, dedicated=False, index=index))
            self._connecting[key] = fut
            try:
                up = await fut
            except UpstreamError as exc:
                self.backend.upstream_error("connect")
                raise Reject(Reason.UNAVAILABLE, f"Redis upstream unavailable: {exc}",
                             hint="Retry in a moment.") from None
            finally:
                self._connecting.pop(key, None)
            if self.closed:
                up.close()
                raise self.closed_reason
            self.shared[proto][index] = up
            return up
        try:
            return await asyncio.shield(fut)
        except UpstreamError as exc:
            raise Reject(Reason.UNAVAILABLE, f"Redis upstream unavailable: {exc}",
                         hint="Retry in a moment.") from None

    # -- dedicated -------------------------------------------------------------------------
    def dedicated_now(self, proto: int) -> Upstream | None:
        idle = self.idle[proto]
        while idle:
            up = idle.pop()
            if up.neutral:
                return up
            up.close()
        return None

    async def get_dedicated(self, proto: int) -> Upstream:
        up = self.dedicated_now(proto)
        if up is not None:
            return up
        if self.closed:
            raise self.closed_reason
        if self.max_dedicated is not None and self.dedicated >= self.max_dedicated:
            raise Reject(Reason.CONNECTIONS, "ERR max number of clients reached",
                         detail=f"{self.dedicated} of {self.max_dedicated} dedicated upstream "
                                "connections (MULTI/WATCH, pub/sub, blocking commands) in use",
                         hint="Use fewer concurrent subscribers, transactions or blocking "
                              "calls, or ask the operator to raise max_clients_dedicated.")
        self.dedicated += 1
        try:
            return await self._open(proto, dedicated=True)
        except UpstreamError as exc:
            self.dedicated -= 1
            self.backend.upstream_error("connect")
            raise Reject(Reason.UNAVAILABLE, f"Redis upstream unavailable: {exc}",
                         hint="Retry in a moment.") from None

    def release(self, up: Upstream) -> None:
        """A dedicated connection its client is done with (after EXEC/DISCARD/UNWATCH, a
        blocking reply, the last UNSUBSCRIBE): kept for the next client only if it is
        provably in neutral state (``Upstream.neutral``), closed otherwise."""
        if up.closed:
            return
        idle = self.idle[up.proto]
        if self.closed or len(idle) >= IDLE_DEDICATED or not up.neutral:
            up.close()
        else:
            idle.append(up)

    def discard(self, up: Upstream) -> None:
        """A dedicated connection in an unknown state (client gone mid-command): close it."""
        up.abort()

    def lost(self, up: Upstream) -> None:
        """Called by the connection when it closes."""
        self.backend.metrics_upstream(-1, up.dedicated)
        if up.dedicated:
            self.dedicated -= 1
            idle = self.idle[up.proto]
            if up in idle:
                idle.remove(up)
        else:
            conns = self.shared[up.proto]
            for i, c in enumerate(conns):
                if c is up:
                    conns[i] = None

    def close(self, reason: Reject | None = None) -> None:
        self.closed = True
        if reason is not None:
            self.closed_reason = reason
        for conns in self.shared.values():
            for up in conns:
                if up is not None:
                    up.close()
        for idle in self.idle.values():
            for up in list(idle):
                up.close()
            idle.clear()

    def stats(self) -> dict[str, int]:
        return {"shared": sum(1 for c in self.shared.values() for u in c if u is not None
                              and not u.closed),
                "dedicated": self.dedicated,
                "idle_dedicated": sum(len(v) for v in self.idle.values())}
