"""The control plane: tenants, tiers, databases, credentials and usage."""

from ogelkit.control.records import (
    DatabaseRecord,
    LayerReport,
    TenantRecord,
    UsageEvent,
    UsageTotals,
)
from ogelkit.control.store import AlreadyExists, NotFound, Store, StoreError, open_store

__all__ = [
    "AlreadyExists",
    "DatabaseRecord",
    "LayerReport",
    "NotFound",
    "Store",
    "StoreError",
    "TenantRecord",
    "UsageEvent",
    "UsageTotals",
    "open_store",
]
