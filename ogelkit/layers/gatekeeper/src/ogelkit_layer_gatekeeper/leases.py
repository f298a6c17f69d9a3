"""Connection leases in Redis, shared by every gateway replica.

One sorted set per tenant (or tenant database): members are ``<gateway id>/<session id>``,
scores the lease's expiry in milliseconds of *Redis's* clock (``TIME``), so replicas with
skewed clocks agree. Admission is one Lua script (drop expired leases, count, add) and
therefore atomic: two replicas can never both take the last slot. Each replica refreshes its
own leases every ``ttl/3``; a replica killed with SIGKILL stops refreshing, and its leases
drop out of the count within ``ttl``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import RedisError

#: Everything a call to the shared state can raise when Redis is down or slow.
STATE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# KEYS[1] lease set; ARGV member, limit (-1 = no cap, count only), ttl in ms.
# Returns {1, count} when the lease was taken, {0, count} at the cap.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if limit >= 0 and n >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, n}
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: lease sets; ARGV[1] ttl in ms, then for each key: member count, members ...
# Re-adds members too (a lease lost during a Redis outage comes back). Returns #keys.
REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expiry = string.format('%d', now + ttl)
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    redis.call('ZADD', KEYS[k], expiry, ARGV[i + j])
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
  i = i + n + 1
end
return #KEYS
"""


class RedisLeases:
    def set_ttl(self, ttl: float) -> None:
        """Lease lifetime in seconds (renewed while held); also on config reload."""
        self.ttl_ms = max(1, round(ttl * 1000))

    def __init__(self, client: Any, prefix: str, ttl: float):
        self.client = client
        self.prefix = prefix
        self.set_ttl(ttl)
        # EVALSHA, falling back to loading the script on NOSCRIPT (Redis restarted or
        # SCRIPT FLUSH): redis-py's Script object does exactly that.
        self._acquire = client.register_script(ACQUIRE)
        self._refresh = client.register_script(REFRESH)

    def redis_key(self, key: str) -> str:
        return f"{self.prefix}conn:{key}"

    async def load(self) -> None:
        """Preload the scripts (SCRIPT LOAD) so the first connection pays no extra trip."""
        for script in (self._acquire, self._refresh):
            script.sha = await self.client.script_load(script.script)

    async def acquire(self, key: str, member: str, limit: int | None) -> tuple[bool, int]:
        """Take a lease unless ``limit`` leases are live; returns (taken, live leases)."""
        taken, count = await self._acquire(
            keys=[self.redis_key(key)], args=[member, -1 if limit is None else limit, self.ttl_ms])
        return bool(taken), int(count)

    async def release(self, key: str, member: str) -> None:
        await self.client.zrem(self.redis_key(key), member)

    async def refresh(self, held: Mapping[str, Iterable[str]]) -> None:
        """Extend every lease this replica holds, in one round trip."""
        keys: list[str] = []
        args: list[Any] = [self.ttl_ms]
        for key, members in held.items():
            members = list(members)
            if not members:
                continue
            keys.append(self.redis_key(key))
            args.append(len(members))
            args.extend(members)
        if keys:
            await self._refresh(keys=keys, args=args)

    async def count(self, key: str) -> int:
        """Live leases of ``key`` (for tests and the admin API; not on the hot path)."""
        now_s, now_us = await self.client.time()
        now_ms = now_s * 1000 + now_us // 1000
        return int(await self.client.zcount(self.redis_key(key), f"({now_ms}", "+inf"))
