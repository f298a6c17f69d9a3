"""Usage per udfPath: calls, errors, refusals, duration, bytes and subscription-seconds.

The usage layer meters every call per tenant database (invoices); this meter adds the
per-function split. Totals are kept in memory per (tenant, database, udfPath) and written
every ``usage_interval`` as control-plane reports (``layer_reports``, layer
``convex.functions``, one row per tenant database, month and gateway process, cumulative),
so they survive the process and need no table of their own.
"""

from __future__ import annotations

import time
from typing import Any

from ogelkit import LayerReport

REPORT_LAYER = "convex.functions"
FIELDS = ("calls", "errors", "rejected", "duration", "bytes_in", "bytes_out",
          "subscription_seconds")


def _month(ts: float | None = None) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts if ts is not None else time.time()))


class FunctionMeter:
    def __init__(self, gateway: str):
        self.gateway = gateway
        self.totals: dict[tuple[str, str, str], list[float]] = {}
        self.month = _month()
        self._dirty: set[tuple[str, str]] = set()

    def _row(self, tenant: str, db: str, path: str) -> list[float]:
        key = (tenant, db, path)
        row = self.totals.get(key)
        if row is None:
            row = self.totals[key] = [0.0] * len(FIELDS)
        self._dirty.add((tenant, db))
        return row

    def call(self, tenant: str, db: str, path: str, *, duration: float, bytes_in: int,
             bytes_out: int, error: bool, rejected: bool) -> None:
        row = self._row(tenant, db, path)
        if rejected:
            row[2] += 1
        else:
            row[0] += 1
            row[3] += duration
            if error:
                row[1] += 1
        row[4] += bytes_in
        row[5] += bytes_out

    def pushed(self, tenant: str, db: str, path: str, nbytes: int) -> None:
        """A subscription update delivered to a client."""
        self._row(tenant, db, path)[5] += nbytes

    def subscribed(self, tenant: str, db: str, path: str, seconds: float) -> None:
        self._row(tenant, db, path)[6] += seconds

    async def flush(self, store: Any) -> None:
        month = _month()
        dirty, self._dirty = self._dirty, set()
        for tenant, db in sorted(dirty):
            body = {path: dict(zip(FIELDS, row, strict=True))
                    for (t, d, path), row in self.totals.items() if t == tenant and d == db}
            await store.put_layer_report(LayerReport(
                REPORT_LAYER, f"{tenant}/{db}/{self.month}/{self.gateway}", body, self.gateway))
        if month != self.month:  # a new month starts from zero
            self.month = month
            self.totals.clear()


async def function_usage(store: Any, tenant: str, database: str | None = None,
                         month: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{database: {udfPath: {field: total}}}`` of a tenant for a month (default: this
    one), summed over every gateway that served it."""
    month = month or _month()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for report in await store.layer_reports(REPORT_LAYER):
        t, db, m, _gw = [*report.subject.split("/", 3), "", "", ""][:4]
        if t != tenant or m != month or (database is not None and db != database):
            continue
        per_db = out.setdefault(db, {})
        for path, values in report.body.items():
            acc = per_db.setdefault(path, dict.fromkeys(FIELDS, 0.0))
            for field in FIELDS:
                acc[field] += float(values.get(field, 0.0))
    return out
