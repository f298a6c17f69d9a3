"""Per-tenant live counters for Studio's charts: operations, errors, time spent, and
refusals by layer and reason, since this process started.

Fed by ``Chain.complete`` (the one place every operation passes): one dict lookup and a few
integer additions per operation. Rates are differences between two reads, so nothing here
runs on a timer.
"""

from __future__ import annotations

from typing import Any

from ogelkit.model import Operation


class TenantCounters:
    __slots__ = ("errors", "operations", "rejections", "seconds")

    def __init__(self) -> None:
        self.operations = 0
        self.errors = 0
        self.seconds = 0.0
        self.rejections: dict[tuple[str, str], int] = {}


class LiveStats:
    def __init__(self) -> None:
        self.tenants: dict[str | None, TenantCounters] = {}

    def complete(self, op: Operation) -> None:
        tenant = op.session.tenant
        slug = tenant.slug if tenant is not None else None
        counters = self.tenants.get(slug)
        if counters is None:
            counters = self.tenants[slug] = TenantCounters()
        n = op.count
        counters.operations += n
        ended = op.ended
        if ended is not None:
            counters.seconds += ended - op.started
        rej = op.rejection
        if rej is not None:
            key = (rej.layer or "gateway", str(rej.reason))
            counters.rejections[key] = counters.rejections.get(key, 0) + n
        elif op.error is not None:
            counters.errors += op.failed or 1

    def snapshot(self, slug: str | None = None) -> dict[str, Any]:
        """Totals of one tenant (or of every tenant when ``slug`` is None)."""
        chosen = [self.tenants[slug]] if slug is not None and slug in self.tenants else (
            [] if slug is not None else list(self.tenants.values()))
        rejections: dict[tuple[str, str], int] = {}
        for c in chosen:
            for key, n in c.rejections.items():
                rejections[key] = rejections.get(key, 0) + n
        return {"operations": sum(c.operations for c in chosen),
                "errors": sum(c.errors for c in chosen),
                "seconds": sum(c.seconds for c in chosen),
                "rejections": [{"layer": k[0], "reason": k[1], "count": n}
                               for k, n in sorted(rejections.items())]}
