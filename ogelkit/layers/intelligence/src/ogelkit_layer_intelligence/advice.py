"""Tier upgrade advice from what the control plane recorded (no running gateway needed).

Inputs are the usage layer's rollups over a period: refusals by reason (connection cap,
rate, cost ceiling, timeouts), storage snapshots and the vCPU/GB-hours the price book bills.
Every recommendation names the tier that would have allowed what was refused, and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ogelkit import USAGE_FIELDS, Tier, TierTable, UsageTotals, format_duration, format_size

#: (usage field, tier field, what is refused, how the limit reads)
_REFUSALS = (
    ("rejected_connections", "connections", "connections refused at the cap",
     lambda v: f"{v} connections"),
    ("rejected_rate", "ops_per_second", "operations refused by the rate limit",
     lambda v: f"{v:g} operations/s"),
    ("rejected_cost", "cost_ceiling", "operations refused over the cost ceiling",
     lambda v: f"a cost ceiling of {v:,.0f}"),
    ("timeouts", "statement_timeout", "operations stopped by the statement timeout",
     lambda v: f"a {format_duration(v)} statement timeout"),
)

DAYS_PER_MONTH = 30.0


@attrs.define
class Recommendation:
    kind: str  # connections | ops_per_second | cost_ceiling | statement_timeout | storage | price
    tier: str | None  # the tier that allows more; None when no tier does
    message: str
    evidence: dict[str, Any]


@attrs.define
class Advice:
    tenant: str
    tier: str
    days: float
    recommended_tier: str | None
    recommendations: list[Recommendation]
    notes: list[str]
    usage: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _limit(tier: Tier, field: str, describe) -> str:
    value = getattr(tier, field)
    return "no limit" if value is None else describe(value)


def _monthly_cost(tier: Tier, vcpu_hours: float, gb_hours: float) -> float:
    p = tier.price
    return (p.base + max(0.0, vcpu_hours - p.included_vcpu_hours) * p.vcpu_hour
            + max(0.0, gb_hours - p.included_gb_hours) * p.gb_hour)


def advise(tenant: str, tier: Tier, tiers: TierTable, totals: Sequence[UsageTotals],
           days: float, *, min_refusals: int, storage_ratio: float,
           auth_failures: int) -> Advice:
    """Advice for ``tenant`` on ``tier`` from the per-database ``totals`` of ``days`` days."""
    usage = {f: sum(t[f] for t in totals) for f in USAGE_FIELDS if f != "storage_bytes"}
    usage["storage_bytes"] = sum(t["storage_bytes"] for t in totals)  # per-database maxima
    recs: list[Recommendation] = []
    notes: list[str] = []
    period = f"in {days:g} day{'s' if days != 1 else ''}"

    for field, limit_field, what, describe in _REFUSALS:
        count = int(usage[field])
        if count < min_refusals:
            continue
        better = tiers.next_with(tier, limit_field)
        current = _limit(tier, limit_field, describe)
        if better is None:
            msg = (f"{count} {what} {period} ({tier.name}: {current}); no tier allows more, "
                   "so the workload itself must change (or talk to the platform).")
        else:
            msg = (f"{count} {what} {period} ({tier.name}: {current}); "
                   f"{better.name} allows {_limit(better, limit_field, describe)}.")
        recs.append(Recommendation(limit_field, better.name if better else None, msg,
                                   {field: count, "limit": getattr(tier, limit_field)}))

    used = int(usage["storage_bytes"])
    if tier.storage is not None and used >= storage_ratio * tier.storage:
        need = used / storage_ratio
        better = next((t for t in tiers.values() if t.rank > tier.rank
                       and (t.storage is None or t.storage >= need)), None)
        share = used / tier.storage
        msg = (f"storage at {share:.0%} of the {tier.name} quota "
               f"({format_size(used)} of {format_size(tier.storage)})")
        msg += (f"; {better.name} allows {_limit(better, 'storage', format_size)}."
                if better else "; no tier allows more.")
        recs.append(Recommendation("storage", better.name if better else None, msg,
                                   {"storage_bytes": used, "limit": tier.storage}))

    # Price: project the period to a month and compare what each bigger tier would cost.
    scale = DAYS_PER_MONTH / days if days > 0 else 1.0
    vcpu_h = usage["vcpu_seconds"] / 3600 * scale
    gb_h = usage["gb_seconds"] / 3600 * scale
    now_cost = _monthly_cost(tier, vcpu_h, gb_h)
    bigger = [t for t in tiers.values() if t.rank > tier.rank]
    cheaper = sorted(((round(_monthly_cost(t, vcpu_h, gb_h), 2), t.rank, t) for t in bigger),
                     key=lambda x: (x[0], x[1]))
    if cheaper and cheaper[0][0] < round(now_cost, 2) - 0.005:
        cost, _, best = cheaper[0]
        recs.append(Recommendation("price", best.name, (
            f"at this usage (projected {vcpu_h:.1f} vCPU-hours and {gb_h:.1f} GB-hours a month) "
            f"{best.name} would cost {cost:.2f} a month instead of {now_cost:.2f} on "
            f"{tier.name}."), {"projected_vcpu_hours": vcpu_h, "projected_gb_hours": gb_h,
                               "cost_now": round(now_cost, 2), "cost_on_" + best.name: cost}))
    elif tier.price.vcpu_hour == 0 and vcpu_h > tier.price.included_vcpu_hours > 0:
        better = bigger[0] if bigger else None  # the next tier up includes more
        recs.append(Recommendation("price", better.name if better else None, (
            f"projected {vcpu_h:.1f} vCPU-hours a month exceed the {tier.price.included_vcpu_hours:g} "
            f"included in {tier.name}, which has no paid overage"
            + (f"; {better.name} includes {better.price.included_vcpu_hours:g}." if better
               else ".")), {"projected_vcpu_hours": vcpu_h,
                            "included": tier.price.included_vcpu_hours}))

    failures = int(usage["auth_failures"])
    if failures >= auth_failures:
        notes.append(f"{failures} failed logins {period}: check the passwords your clients use "
                     "(or whether someone is guessing them); repeated failures get banned.")
    banned = int(usage["banned"])
    if banned:
        notes.append(f"{banned} requests refused by a ban or a retry-storm back-off {period}: "
                     "a client retries without waiting; use exponential back-off.")
    if not recs:
        notes.append(f"no refusals or quota pressure worth a bigger tier {period}: "
                     f"{tier.name} fits this workload.")

    ranked = [tiers[r.tier] for r in recs if r.tier is not None and r.tier in tiers]
    target = max(ranked, key=lambda t: t.rank).name if ranked else None
    return Advice(tenant, tier.name, days, target, recs, notes, usage)
