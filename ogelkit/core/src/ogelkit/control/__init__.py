"""The control plane: tenants, tiers, databases, credentials and usage."""

from ogelkit.control.records import DatabaseRecord, TenantRecord, UsageEvent, UsageTotals
from ogelkit.control.store import AlreadyExists, NotFound, Store, StoreError, open_store

__all__ = [
    "AlreadyExists",
    "DatabaseRecord",
    "NotFound",
    "Store",
    "StoreError",
    "TenantRecord",
    "UsageEvent",
    "UsageTotals",
    "open_store",
]
