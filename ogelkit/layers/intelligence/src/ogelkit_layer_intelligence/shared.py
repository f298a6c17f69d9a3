"""Bans and back-offs in Redis, shared by every gateway replica.

Keys (``P`` = key_prefix):

``P intel:fail:<key>``   sorted set of one (tenant, address)'s failed logins, scored by
                        Redis's clock in ms; trimmed to the window by the script.
``P intel:level:<key>``  the key's escalation level; expires ban_memory after its last block.
``P intel:blocks``       sorted set of every active block: member = key, score = end (ms).

Each decision is one Lua script using Redis's own clock (``TIME``), so replicas with skewed
clocks agree and two replicas cannot both start a first-level ban for the same burst.
Replicas read ``P intel:blocks`` every sync_interval; the replica that decided a block
applies it at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

STATE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ESCALATE = """
local level = redis.call('INCR', KEYS[2])
local dur = math.floor(math.min(tonumber(ARGV[4]), tonumber(ARGV[2]) * tonumber(ARGV[3]) ^ (level - 1)))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) + dur)
local ends = now + dur
local current = redis.call('ZSCORE', KEYS[3], ARGV[6])
if not current or tonumber(current) < ends then
  redis.call('ZADD', KEYS[3], string.format('%d', ends), ARGV[6])
end
"""

# KEYS: fail set, level, blocks. ARGV: event id, base ms, factor, max ms, memory ms, member,
# window ms, threshold. Returns {blocked 0/1, count or level, duration ms}.
FAIL = _NOW + """
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[8]) then
  return {0, n, 0}
end
redis.call('DEL', KEYS[1])
""" + _ESCALATE + """
return {1, level, dur}
"""

# KEYS: (unused: fail set), level, blocks. ARGV: (unused), base ms, factor, max ms, memory ms, member.
# A block already running is not escalated again (the first replica to see a storm wins).
BLOCK = _NOW + """
local running = redis.call('ZSCORE', KEYS[3], ARGV[6])
if running and tonumber(running) > now then
  return {0, 0, tonumber(running) - now}
end
""" + _ESCALATE + """
return {1, level, dur}
"""

# KEYS: blocks. Returns {now ms, member, end ms, member, end ms, ...} of live blocks.
SYNC = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {now}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live do out[#out + 1] = live[i] end
return out
"""


class SharedBlocks:
    def __init__(self, client: Any, prefix: str):
        self.client = client
        self.prefix = prefix
        self.blocks_key = f"{prefix}intel:blocks"
        self._fail = client.register_script(FAIL)
        self._block = client.register_script(BLOCK)
        self._sync = client.register_script(SYNC)

    async def load(self) -> None:
        for script in (self._fail, self._block, self._sync):
            script.sha = await self.client.script_load(script.script)

    @staticmethod
    def _escalation_args(escalation) -> list[Any]:
        return [round(escalation.base * 1000), escalation.factor,
                round(escalation.maximum * 1000), round(escalation.memory * 1000)]

    async def failure(self, key: str, event_id: str, escalation, window: float,
                      threshold: int) -> tuple[bool, int, float]:
        """Count one failure of ``key``; (blocked now, level or count, block seconds)."""
        blocked, n, dur = await self._fail(
            keys=[f"{self.prefix}intel:fail:{key}", f"{self.prefix}intel:level:{key}",
                  self.blocks_key],
            args=[event_id, *self._escalation_args(escalation), key, round(window * 1000),
                  threshold])
        return bool(blocked), int(n), int(dur) / 1000

    async def block(self, key: str, escalation) -> tuple[bool, int, float]:
        """Start the next block of ``key`` unless one runs; (started, level, seconds left)."""
        started, level, dur = await self._block(
            keys=[f"{self.prefix}intel:fail:{key}", f"{self.prefix}intel:level:{key}",
                  self.blocks_key],
            args=["", *self._escalation_args(escalation), key])
        return bool(started), int(level), int(dur) / 1000

    async def live(self) -> dict[str, float]:
        """Every live block: key -> seconds left (by Redis's clock)."""
        raw = await self._sync(keys=[self.blocks_key], args=[])
        now = int(raw[0])
        out: dict[str, float] = {}
        for i in range(1, len(raw) - 1, 2):
            member = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            out[member] = (float(raw[i + 1]) - now) / 1000
        return out
