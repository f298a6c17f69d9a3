"""Cost-to-duration calibration per backend, and the cost ceiling it suggests per tier.

The cost layer sets ``op.cost`` (Postgres planner units, MongoDB explain figures ...) before
an operation runs; the duration is measured when it completes. From the most recent pairs
of a backend:

1. fit ``duration = a + b * cost`` by least squares;
2. take ``q``, the 99th percentile of ``observed / predicted`` duration (how much slower
   than the fit the slowest 1 % of operations ran);
3. for a tier whose p99 latency target is ``T``, the cost at which ``q * (a + b * cost)``
   reaches ``T`` is ``c_T = (T / q - a) / b``;
4. suggested ceiling = ``max(c_T, p95 of observed costs)`` (the seed design's rule: never
   suggest a ceiling that would refuse more than 5 % of what the backend actually runs).

No suggestion without enough pairs, or when cost does not predict duration (slope <= 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = 1  # version of the report body


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Samples:
    """A ring buffer of the most recent (cost, duration) pairs of one backend."""

    __slots__ = ("costs", "durations", "next", "seen", "size")

    def __init__(self, size: int):
        self.size = size
        self.costs: list[float] = []
        self.durations: list[float] = []
        self.next = 0
        self.seen = 0

    def add(self, cost: float, duration: float) -> None:
        self.seen += 1
        if len(self.costs) < self.size:
            self.costs.append(cost)
            self.durations.append(duration)
        else:
            self.costs[self.next] = cost
            self.durations[self.next] = duration
            self.next = (self.next + 1) % self.size

    def __len__(self) -> int:
        return len(self.costs)


def fit(costs: Sequence[float], durations: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares ``(a, b)`` of ``duration = a + b * cost``; None without cost spread."""
    n = len(costs)
    if n < 2:
        return None
    mean_c = sum(costs) / n
    mean_d = sum(durations) / n
    var = sum((c - mean_c) ** 2 for c in costs)
    if var <= 0:
        return None
    cov = sum((c - mean_c) * (d - mean_d) for c, d in zip(costs, durations, strict=True))
    b = cov / var
    return mean_d - b * mean_c, b


def report(samples: Samples, targets: Mapping[str, float], ceilings: Mapping[str, float | None],
           *, min_samples: int) -> dict[str, Any]:
    """The calibration of one backend as a JSON-ready dict.

    ``targets``: tier -> p99 latency target (seconds); ``ceilings``: tier -> configured
    cost ceiling, shown next to the suggestion.
    """
    n = len(samples)
    body: dict[str, Any] = {"schema": SCHEMA, "samples": n, "seen": samples.seen,
                            "min_samples": min_samples, "fit": None, "tiers": {}}
    if n == 0:
        body["status"] = "no samples (is the cost layer in front of this backend?)"
        return body
    costs, durations = samples.costs, samples.durations
    p95_cost = percentile(costs, 95)
    body.update({"p95_cost": p95_cost, "p99_duration": percentile(durations, 99),
                 "max_cost": max(costs)})
    if n < min_samples:
        body["status"] = f"collecting: {n} of {min_samples} samples"
        return body
    line = fit(costs, durations)
    if line is None or line[1] <= 0:
        body["status"] = "cost does not predict duration on this backend (no positive slope)"
        return body
    a, b = line
    ratios = [d / p for c, d in zip(costs, durations, strict=True) if (p := a + b * c) > 0]
    q = max(1.0, percentile(ratios, 99)) if ratios else 1.0
    body["fit"] = {"intercept_s": a, "seconds_per_cost_unit": b, "p99_slowdown": q}
    body["status"] = "ok"
    for tier, target in targets.items():
        at_target = (target / q - a) / b
        entry: dict[str, Any] = {"p99_target_s": target, "configured_ceiling": ceilings.get(tier)}
        if at_target > 0:
            entry["cost_at_target"] = _round(at_target)
            entry["suggested_ceiling"] = _round(max(at_target, p95_cost))
        else:
            # Even a free operation misses the target at p99: the backend is too slow for
            # this tier's promise; a ceiling cannot fix that, so keep the p95 floor.
            entry["cost_at_target"] = None
            entry["suggested_ceiling"] = _round(p95_cost)
            entry["note"] = "p99 target missed even at cost 0 (backend overhead too high)"
        body["tiers"][tier] = entry
    return body


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
