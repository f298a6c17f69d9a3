"""Invoice preview from usage rollups and the tier's price book (base price + overage)."""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence

import attrs

from ogelkit.control.records import UsageTotals
from ogelkit.tiers import Tier


def month_range(month: str | None = None) -> tuple[float, float, str]:
    """``"2026-11"`` -> (start, end) epoch seconds in UTC and the normalised label."""
    if month is None:
        today = dt.datetime.now(dt.UTC)
        year, mon = today.year, today.month
    else:
        try:
            year_s, mon_s = month.strip().split("-")
            year, mon = int(year_s), int(mon_s)
            # 1970..9998 keeps both ends of the month inside datetime's range
            if not (1 <= mon <= 12 and 1970 <= year <= 9998):
                raise ValueError
        except ValueError as exc:
            raise ValueError(f'month must look like "2026-11", got "{month}"') from exc
    start = dt.datetime(year, mon, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(year, mon)[1]
    end = start + dt.timedelta(days=days)
    return start.timestamp(), end.timestamp(), f"{year:04d}-{mon:02d}"


@attrs.frozen
class Invoice:
    tier: str
    month: str
    base: float
    vcpu_hours: float
    gb_hours: float
    included_vcpu_hours: float
    included_gb_hours: float
    vcpu_overage: float  # currency
    gb_overage: float
    total: float


def invoice(tier: Tier, month: str, totals: Sequence[UsageTotals]) -> Invoice:
    """The month's invoice preview. ``totals`` must cover *every* database of the tenant:
    the base price and the included hours are per tenant, not per database."""
    vcpu_hours = sum(t["vcpu_seconds"] for t in totals) / 3600.0
    gb_hours = sum(t["gb_seconds"] for t in totals) / 3600.0
    p = tier.price
    vcpu_over = max(0.0, vcpu_hours - p.included_vcpu_hours) * p.vcpu_hour
    gb_over = max(0.0, gb_hours - p.included_gb_hours) * p.gb_hour
    return Invoice(tier.name, month, p.base, vcpu_hours, gb_hours, p.included_vcpu_hours,
                   p.included_gb_hours, round(vcpu_over, 4), round(gb_over, 4),
                   round(p.base + vcpu_over + gb_over, 2))
