"""A bounded cache of estimates with a time to live, tuned for the hit path.

Eviction is first-in first-out (an ``OrderedDict``: popping the oldest entry of a plain dict
has to skip every slot deleted before it), which for a cache whose entries all expire after
the same TTL is what LRU would mostly do anyway, without reordering on every hit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class CostCache:
    __slots__ = ("entries", "size")

    def __init__(self, size: int):
        self.size = size
        # (cost, expires) by key; the layer reads it directly on its hit path.
        self.entries: OrderedDict[Hashable, tuple[float | None, float]] = OrderedDict()

    def get(self, key: Hashable, now: float) -> tuple[float | None, float] | None:
        """``(cost, expires)`` when cached and fresh (cost None = the backend could not say)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.entries[key]
            return None
        return entry

    def put(self, key: Hashable, cost: float | None, expires: float) -> None:
        entries = self.entries
        entries.pop(key, None)
        while len(entries) >= self.size:
            entries.popitem(last=False)
        entries[key] = (cost, expires)

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
