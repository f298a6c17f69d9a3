"""GCRA (generic cell rate algorithm), the token bucket kept as one number per key.

A bucket is its *theoretical arrival time* ``tat``: when it would be empty again. With an
emission interval ``T = 1/rate`` and a tolerance ``tau = burst * T``, an operation at ``now``
is admitted when ``max(tat, now) + T - now <= tau``, and then ``tat`` moves by ``T``. From an
idle bucket exactly ``burst`` operations pass at once, then one per ``T``. The same formula
runs in Python (in-process mode) and in Lua on Redis's clock (``redis_bucket.py``).

``take`` returns 0 (admit now), a positive delay in seconds (delay mode: admit after it) or
a negative number whose magnitude is the time until an operation would be admitted.
"""

from __future__ import annotations

# Float sums of 1/rate drift by ~1e-13 s; without this the burst-th operation could be
# refused by a rounding error.
_EPSILON = 1e-9


class LocalBuckets:
    __slots__ = ("tat",)

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}

    def take(self, key: str, interval: float, tolerance: float, max_delay: float,
             now: float) -> float:
        tat = self.tat.get(key, now)
        if tat < now:
            tat = now
        new = tat + interval
        excess = new - now - tolerance
        if excess <= _EPSILON:
            self.tat[key] = new
            return 0.0
        if excess <= max_delay:  # max_delay is -1 in reject mode
            self.tat[key] = new
            return excess
        return -excess

    def purge(self, now: float) -> int:
        """Forget buckets that are full again (``tat`` in the past); returns how many."""
        idle = [k for k, tat in self.tat.items() if tat <= now]
        for k in idle:
            del self.tat[k]
        return len(idle)
