"""GCRA buckets in Redis: one atomic Lua script on Redis's own clock, batched per round trip.

Correct across replicas because the whole decision (read ``tat``, compare, write) runs inside
one script (no check-then-add race) and ``now`` comes from ``redis.call('TIME')``, not from a
replica's clock. Operations that arrive while a call is in flight are queued and decided by
the next call, all keys together (one ``EVALSHA`` for the lot): a busy gateway needs one
round trip per batch, not per operation, and never more than one Redis connection for this
layer. Each operation is still decided individually and in arrival order inside the script.

*Credits*: with a high rate, a replica may also take a few tokens in advance (``extra`` per
key, only tokens the bucket can give at once) and admit the next operations from them
without a round trip. They are taken under the same atomic rule, so they never let more
than the rate through; they expire quickly, so an idle replica cannot save them up for a
later burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

STATE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# KEYS: buckets. ARGV[1]: max delay in µs (-1 in reject mode); then per key: interval µs,
# tolerance µs, number of operations, credits wanted. Returns one integer per operation, in
# order: 0 admit now, > 0 admit after that many µs, < 0 refused (magnitude = µs until one
# would pass); then, per key, the number of credits granted (tokens available at once).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_delay = tonumber(ARGV[1])
local out = {}
local credits = {}
local a = 2
for k = 1, #KEYS do
  local interval = tonumber(ARGV[a])
  local tolerance = tonumber(ARGV[a + 1])
  local n = tonumber(ARGV[a + 2])
  local extra = tonumber(ARGV[a + 3])
  a = a + 4
  local tat = tonumber(redis.call('GET', KEYS[k]) or '0') or 0
  if tat < now then tat = now end
  local changed = false
  for i = 1, n do
    local new = tat + interval
    local excess = new - now - tolerance
    if excess <= 0 then
      tat = new
      changed = true
      out[#out + 1] = 0
    elseif excess <= max_delay then
      tat = new
      changed = true
      out[#out + 1] = excess
    else
      out[#out + 1] = -excess
    end
  end
  local granted = 0
  if extra > 0 then
    local room = math.floor((now + tolerance - tat) / interval)
    if room > 0 then
      granted = math.min(extra, room)
      tat = tat + granted * interval
      changed = true
    end
  end
  credits[k] = granted
  if changed then
    redis.call('SET', KEYS[k], string.format('%.0f', tat), 'PX',
               math.floor((tat - now) / 1000) + 1000)
  end
end
for k = 1, #KEYS do
  out[#out + 1] = credits[k]
end
return out
"""


class _Batch:
    __slots__ = ("entries", "extra", "interval", "tolerance")

    def __init__(self, interval: int, tolerance: int, extra: int):
        self.interval = interval
        self.tolerance = tolerance
        self.extra = extra
        self.entries: list[tuple[asyncio.Future, Any]] = []


#: settle(future, context, result µs) on success; fail(future, context, exc) on a Redis error;
#: credit(key, n) with the credits granted for a key.
Settle = Callable[[asyncio.Future, Any, int], None]
Fail = Callable[[asyncio.Future, Any, BaseException], None]
Credit = Callable[[str, int], None]


class RedisBuckets:
    def set_max_delay(self, max_delay: float) -> None:
        """Seconds a decision may delay (negative: refuse instead); also on config reload."""
        self.max_delay_us = round(max_delay * 1_000_000) if max_delay >= 0 else -1

    def __init__(self, client: Any, prefix: str, max_delay: float, settle: Settle, fail: Fail,
                 credit: Credit | None = None):
        self.client = client
        self.prefix = prefix
        self.set_max_delay(max_delay)
        self._script = client.register_script(TAKE)  # EVALSHA, reloads on NOSCRIPT
        self._settle = settle
        self._fail = fail
        self._credit = credit
        # Queued per (bucket, interval, tolerance): a batch of n requests is one entry with
        # n times the interval, its bucket's key then appears more than once in KEYS.
        self._pending: dict[tuple[str, int, int], _Batch] = {}
        self._sending = False
        self._task: asyncio.Task | None = None
        self.calls = 0  # round trips made (for describe/tests)

    async def load(self) -> None:
        self._script.sha = await self.client.script_load(self._script.script)

    def submit(self, key: str, interval: int, tolerance: int, context: Any,
               extra: int = 0) -> asyncio.Future:
        """Queue one operation for the next round trip (asking for up to ``extra`` credits
        for ``key``); the future is settled by the caller's ``settle``/``fail`` callbacks."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pk = (key, interval, tolerance)
        batch = self._pending.get(pk)
        if batch is None:
            batch = self._pending[pk] = _Batch(interval, tolerance, extra)
        batch.entries.append((fut, context))
        if not self._sending:
            self._sending = True
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batches, self._pending = self._pending, {}
                await self._send(batches)
        finally:
            self._sending = False

    async def _send(self, batches: dict[tuple[str, int, int], _Batch]) -> None:
        keys = []
        args: list[int] = [self.max_delay_us]
        for (key, _, _), batch in batches.items():
            keys.append(self.prefix + key)
            args += (batch.interval, batch.tolerance, len(batch.entries), batch.extra)
        try:
            self.calls += 1
            results = await self._script(keys=keys, args=args)
        except STATE_ERRORS as exc:
            for batch in batches.values():
                for fut, context in batch.entries:
                    self._fail(fut, context, exc)
            return
        except BaseException:  # cancelled at shutdown: nobody may hang on a future
            for batch in batches.values():
                for fut, _ in batch.entries:
                    if not fut.done():
                        fut.cancel()
            raise
        i = 0
        for batch in batches.values():
            for fut, context in batch.entries:
                self._settle(fut, context, int(results[i]))
                i += 1
        if self._credit is not None:
            for (key, _, _), batch in batches.items():
                granted = int(results[i])
                i += 1
                if batch.extra:
                    self._credit(key, granted)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
            except (TimeoutError, Exception):
                self._task.cancel()
