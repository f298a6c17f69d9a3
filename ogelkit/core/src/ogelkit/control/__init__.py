"""The control plane: tenants, tiers, databases, credentials and usage."""

from ogelkit.control.records import (
    DatabaseRecord,
    LayerReport,
    TenantRecord,
    UsageEvent,
    UsageTotals,
)
from ogelkit.control.store import (
    AlreadyExists,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)

__all__ = [
    "AlreadyExists",
    "DatabaseRecord",
    "LayerReport",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TenantRecord",
    "UsageEvent",
    "UsageTotals",
    "open_store",
]
