"""In-process detection and escalation: auth-failure bursts, retry storms, blocks.

Used alone without shared state, and as the fallback while Redis is down. Everything is
keyed by strings and bounded: entries that can no longer matter are pruned.
"""

from __future__ import annotations

from collections import deque

import attrs

#: Most keys a table keeps before the least recently touched half is forgotten, so a spray
#: of made-up tenant names or addresses cannot grow memory without bound.
MAX_KEYS = 100_000


@attrs.define
class Block:
    until: float  # time.monotonic() deadline
    level: int  # 1 = first block; 0 = unknown (learnt from another replica)
    duration: float


@attrs.define
class Escalation:
    """Block lengths that grow with each repeat: base x factor^(level-1), capped."""

    base: float
    factor: float
    maximum: float
    memory: float

    def duration(self, level: int) -> float:
        return min(self.maximum, self.base * self.factor ** (level - 1))


class Escalator:
    """Remembers each key's level; ``block(key)`` starts the next, longer block."""

    def __init__(self, escalation: Escalation):
        self.escalation = escalation
        self._levels: dict[str, tuple[int, float]] = {}  # key -> (level, block end)

    def block(self, key: str, now: float) -> Block:
        level, ended = self._levels.get(key, (0, 0.0))
        if now - ended > self.escalation.memory:
            level = 0
        level += 1
        duration = self.escalation.duration(level)
        self._levels[key] = (level, now + duration)
        _bound(self._levels)
        return Block(now + duration, level, duration)

    def prune(self, now: float) -> None:
        memory = self.escalation.memory
        for key in [k for k, (_, ended) in self._levels.items() if now - ended > memory]:
            del self._levels[key]

    def __len__(self) -> int:
        return len(self._levels)


class BurstCounter:
    """Events per key in a sliding window; ``hit`` says when ``threshold`` is reached (and
    starts counting afresh)."""

    def __init__(self, threshold: int, window: float):
        self.threshold = threshold
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float) -> int | None:
        """Record one event; return the count when it reaches the threshold, else None."""
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            _bound(self._hits)
        hits.append(now)
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= self.threshold:
            count = len(hits)
            del self._hits[key]
            return count
        return None

    def count(self, key: str, now: float) -> int:
        hits = self._hits.get(key, ())
        return sum(1 for t in hits if t > now - self.window)

    def prune(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]

    def __len__(self) -> int:
        return len(self._hits)


class RateMeter:
    """Events per second per key, averaged over ``window`` whole seconds (one bucket per
    second: O(1) per event, no timestamps kept)."""

    def __init__(self, window: float):
        self.size = max(1, round(window))
        self._buckets: dict[str, tuple[list[int], list[int]]] = {}  # key -> (seconds, counts)

    def add(self, key: str, now: float, n: int = 1) -> float:
        """Count ``n`` events at ``now``; return the key's average rate over the window."""
        second = int(now)
        entry = self._buckets.get(key)
        if entry is None:
            entry = self._buckets[key] = ([-1] * self.size, [0] * self.size)
            _bound(self._buckets)
        seconds, counts = entry
        i = second % self.size
        if seconds[i] != second:
            seconds[i] = second
            counts[i] = 0
        counts[i] += n
        oldest = second - self.size
        return sum(c for s, c in zip(seconds, counts, strict=True) if s > oldest) / self.size

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def prune(self, now: float) -> None:
        oldest = int(now) - self.size
        for key in [k for k, (secs, _) in self._buckets.items() if max(secs) <= oldest]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def _bound(table: dict) -> None:
    if len(table) > MAX_KEYS:
        for key in list(table)[: MAX_KEYS // 2]:  # insertion order: the oldest keys
            del table[key]
