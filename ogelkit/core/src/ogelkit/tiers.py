"""Tiers: the limits every layer enforces, and the price book the usage report bills from.

The shipped default table is DESIGN §5. ``None`` always means *unlimited*. Values are kept in
base units (seconds, bytes, operations) so layers compare numbers, never strings.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

MB = 1024**2
GB = 1024**3


@attrs.frozen
class Price:
    """Monthly base price plus usage overage, in the config's currency (USD by default)."""

    base: float = 0.0
    included_vcpu_hours: float = 0.0
    included_gb_hours: float = 0.0
    vcpu_hour: float = 0.0  # overage price per vCPU-hour beyond the included ones; 0 = no overage
    gb_hour: float = 0.0


@attrs.frozen
class Tier:
    name: str
    rank: int  # ordering used for "upgrade to X" hints: higher is bigger
    connections: int | None
    ops_per_second: float | None
    burst: int | None
    statement_timeout: float | None  # seconds
    idle_in_transaction_timeout: float | None
    work_mem: int | None  # bytes
    parallel_workers: int | None
    cost_ceiling: float | None  # Postgres planner units
    idle_before_sleep: float | None  # seconds; None = never sleeps
    storage: int | None  # bytes
    memory: int | None  # in-memory data quota (Redis), bytes
    max_keys: int | None  # key-count quota (Redis)
    connection_queue: float  # seconds a client may wait for a connection slot; 0 = reject at once
    price: Price = Price()


DEFAULT_TIERS: Mapping[str, Tier] = {
    t.name: t
    for t in (
        Tier("free", 0, 5, 10, 20, 10.0, 30.0, 16 * MB, 2, 10_000, 300.0, 1 * GB,
             50 * MB, 1_000, 0.0,
             Price(0, 5, 10, 0, 0)),
        Tier("starter", 1, 10, 50, 100, 30.0, 60.0, 64 * MB, 4, 50_000, 900.0, 10 * GB,
             128 * MB, 10_000, 0.0,
             Price(10, 25, 50, 0.15, 0.05)),
        Tier("pro", 2, 50, 200, 400, 60.0, 120.0, 256 * MB, 8, 200_000, None, 100 * GB,
             512 * MB, 100_000, 5.0,
             Price(50, 200, 500, 0.12, 0.04)),
        Tier("enterprise", 3, 100, None, None, 120.0, 300.0, 512 * MB, 16, None, None, 1024 * GB,
             2 * GB, 1_000_000, 30.0,
             Price(200, 1000, 2000, 0.10, 0.03)),
    )
}


class TierTable(Mapping[str, Tier]):
    """The configured tiers, ordered by rank, with helpers for limit hints."""

    def __init__(self, tiers: Mapping[str, Tier]):
        self._tiers = dict(sorted(tiers.items(), key=lambda kv: kv[1].rank))

    def __getitem__(self, name: str) -> Tier:
        return self._tiers[name]

    def __iter__(self):
        return iter(self._tiers)

    def __len__(self) -> int:
        return len(self._tiers)

    def next_with(self, tier: Tier, field: str) -> Tier | None:
        """The smallest tier above ``tier`` whose ``field`` limit is larger (None = unlimited)."""
        current = getattr(tier, field)
        for candidate in self._tiers.values():
            if candidate.rank <= tier.rank:
                continue
            value = getattr(candidate, field)
            if value is None or (current is not None and value > current):
                return candidate
        return None

    def upgrade_hint(self, tier: Tier, field: str, describe) -> str | None:
        """``"Upgrade to pro for 50 connections."`` or None when no tier allows more."""
        better = self.next_with(tier, field)
        if better is None:
            return None
        return f"Upgrade to {better.name} for {describe(getattr(better, field))}."


DEFAULT_TIER_TABLE = TierTable(DEFAULT_TIERS)
