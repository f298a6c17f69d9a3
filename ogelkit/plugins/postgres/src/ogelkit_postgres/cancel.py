"""Cancel keys: the BackendKeyData the gateway hands each client, and where it leads.

A CancelRequest arrives on a *new* connection, possibly at another gateway replica behind
the same load balancer. Locally the key maps to the client connection (whose current
server connection gets the upstream CancelRequest). With ``[state]`` configured, each key
is also written to Redis (``ogelkit:pgcancel:<pid>:<secret>`` -> gateway id, with a TTL
refreshed while the client is connected, as Neon's proxy does); a replica that does not
know a key looks it up there and publishes it on the owner's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ogelkit import GatewayContext
    from ogelkit_postgres.connection import PostgresConnection

log = logging.getLogger("ogelkit.postgres")

KEY_PREFIX = "ogelkit:pgcancel:"
CHANNEL_PREFIX = "ogelkit:pgcancel-to:"


class CancelKeys:
    def __init__(self, ctx: GatewayContext, ttl: float):
        self.ctx = ctx
        self.ttl = max(10.0, ttl)
        self.local: dict[tuple[int, int], PostgresConnection] = {}
        self.redis: Any = None
        self.channel = CHANNEL_PREFIX + ctx.gateway_id
        self._to_add: set[tuple[int, int]] = set()
        self._to_del: set[tuple[int, int]] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sub_client: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.ctx.state_url is None:
            return
        self.redis = self.ctx.state()
        self._spawn(self._subscribe())
        self._spawn(self._refresh())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.redis is not None and self.local:
            with contextlib.suppress(Exception):
                await self.redis.delete(*[self._name(k) for k in self.local])
        if self._sub_client is not None:
            with contextlib.suppress(Exception):
                await self._sub_client.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- keys ------------------------------------------------------------------------------
    def new(self, conn: PostgresConnection, pid: int | None = None) -> tuple[int, int]:
        """A fresh key: ``pid`` when given (session mode: the server's real pid), else a
        random one; the secret is always the gateway's own."""
        while True:
            key = (pid or secrets.randbits(31) or 1, secrets.randbits(32) - 2**31)
            if key not in self.local:
                break
        self.local[key] = conn
        if self.redis is not None:
            self._to_add.add(key)
            self._to_del.discard(key)
            self._schedule()
        return key

    def drop(self, key: tuple[int, int]) -> None:
        if self.local.pop(key, None) is not None and self.redis is not None:
            if key in self._to_add:
                self._to_add.discard(key)
            else:
                self._to_del.add(key)
                self._schedule()

    @staticmethod
    def _name(key: tuple[int, int]) -> str:
        return f"{KEY_PREFIX}{key[0]}:{key[1]}"

    def _schedule(self) -> None:
        # Batch the writes: a connection storm becomes a few pipelines, not a task per key.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(0.01, self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_scheduled = False
        self._spawn(self._flush())

    async def _flush(self) -> None:
        adds, self._to_add = self._to_add, set()
        dels, self._to_del = self._to_del, set()
        if not adds and not dels:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            gateway = self.ctx.gateway_id
            for key in adds:
                pipe.set(self._name(key), gateway, ex=int(self.ttl))
            if dels:
                pipe.delete(*[self._name(k) for k in dels])
            await pipe.execute()
        except Exception as exc:
            log.warning("could not publish cancel keys to shared state: %s", exc)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            keys = list(self.local)
            try:
                for i in range(0, len(keys), 500):
                    pipe = self.redis.pipeline(transaction=False)
                    for key in keys[i:i + 500]:
                        pipe.expire(self._name(key), int(self.ttl))
                    await pipe.execute()
            except Exception as exc:
                log.warning("could not refresh cancel keys in shared state: %s", exc)

    # -- cancel requests -------------------------------------------------------------------
    async def cancel(self, pid: int, secret: int) -> bool:
        """Route a CancelRequest; True when a client was found (here or at a replica)."""
        conn = self.local.get((pid, secret))
        if conn is not None:
            conn.cancel_from_client()
            return True
        if self.redis is None:
            return False
        try:
            owner = await self.redis.get(self._name((pid, secret)))
            if owner is None:
                return False
            owner = owner.decode() if isinstance(owner, bytes) else owner
            if owner == self.ctx.gateway_id:
                return False  # ours but gone
            await self.redis.publish(CHANNEL_PREFIX + owner, f"{pid}:{secret}")
            return True
        except Exception as exc:
            log.warning("could not route a cancel request through shared state: %s", exc)
            return False

    async def _subscribe(self) -> None:
        import redis.asyncio as aioredis
        delay = 0.5
        while True:
            try:
                # Its own client: the shared one has a short read timeout for layer calls.
                self._sub_client = aioredis.from_url(str(self.ctx.state_url), socket_timeout=None,
                                                     socket_connect_timeout=2.0)
                pubsub = self._sub_client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    pid, _, secret = text.partition(":")
                    conn = self.local.get((int(pid), int(secret)))
                    if conn is not None:
                        conn.cancel_from_client()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel-key subscription failed, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if self._sub_client is not None:
                    with contextlib.suppress(Exception):
                        await self._sub_client.aclose()
                    self._sub_client = None
