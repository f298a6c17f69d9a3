"""A tenant's tier advice with the calibration of its backends, read from the control plane:
shared by ``ogelkit tenants advise`` and the admin API's ``GET
/admin/tenants/{slug}/advice`` (which Studio shows)."""

from __future__ import annotations

import math
import time
from typing import Any

from ogelkit import Tier, TierTable
from ogelkit_layer_intelligence.advice import Advice, advise
from ogelkit_layer_intelligence.layer import REPORT_LAYER, calibration_subject
from ogelkit_layer_intelligence.options import IntelligenceOptions


async def tenant_advice(store: Any, tiers: TierTable, options: IntelligenceOptions,
                        tenant: str, days: float
                        ) -> tuple[Advice, dict[str, Any], Tier]:
    """(advice, calibration per backend, the tenant's tier); ``NotFound`` for no tenant."""
    end = time.time()
    start = math.floor((end - days * 86400) / 3600) * 3600
    record = await store.require_tenant(tenant)
    totals = await store.usage_totals(tenant, start, end + 3600)
    dbs = await store.list_databases(tenant)
    reports = {r.subject: r for r in await store.layer_reports(REPORT_LAYER)}
    tier = tiers.get(record.tier) or next(iter(tiers.values()))
    advice = advise(tenant, tier, tiers, totals, days,
                    min_refusals=options.advise_min_refusals,
                    storage_ratio=options.advise_storage_ratio,
                    auth_failures=options.auth_failures)
    calibration = {}
    for backend in sorted({d.backend for d in dbs}):
        rep = reports.get(calibration_subject(backend))
        if rep is None:
            continue
        entry = rep.body.get("tiers", {}).get(tier.name)
        if entry is not None:
            calibration[backend] = {**entry, "samples": rep.body.get("samples"),
                                    "updated_at": rep.updated_at}
    return advice, calibration, tier
