"""Control plane records: what the store keeps about tenants, databases and usage."""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs

TENANT_STATUSES = ("active", "suspended")
DATABASE_STATES = ("active", "idle", "asleep", "waking")


@attrs.frozen
class TenantRecord:
    slug: str
    tier: str
    status: str = "active"
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def suspended(self) -> bool:
        return self.status == "suspended"


@attrs.frozen
class DatabaseRecord:
    tenant: str
    name: str  # the tenant's own name for it ("main")
    kind: str  # backend type: postgres, redis, mongodb ...
    backend: str  # backend id in the config
    upstream: dict[str, Any] = attrs.field(factory=dict, repr=False)  # decrypted details
    state: str = "active"
    created_at: float = 0.0
    #: Lifecycle (migration 3): wall-clock times, 0/None when never.
    last_active_at: float = 0.0  # last time a client was connected (any gateway)
    last_cold_start_at: float | None = None  # when the last wake finished
    last_cold_start_seconds: float | None = None  # how long that wake took
    state_changed_at: float = 0.0
    requested_state: str | None = None  # "asleep"/"active" asked by the CLI, applied by a gateway


#: Numeric fields of schema version 1 (migration 1 creates exactly these columns; frozen).
USAGE_FIELDS_V1 = (
    "operations",  # admitted operations
    "rejected",  # operations or connections refused (layers or core), auth failures excluded
    "errors",  # operations the upstream answered with an error
    "duration",  # seconds spent in admitted operations
    "bytes_in",
    "bytes_out",
    "rows",  # rows / documents returned
    "written",  # rows / documents written
    "connections",  # connections opened
    "connection_seconds",
    "vcpu_seconds",  # estimated, see the usage layer's docs for the formula
    "gb_seconds",  # estimated memory GB-seconds
    "storage_bytes",  # snapshot: summed as a *maximum* in rollups
)

#: Added by migration 2: why things were refused, for tier advice (``tenants advise``).
USAGE_FIELDS_V2 = (
    "rejected_connections",  # refused at the connection cap (reason "connections")
    "rejected_rate",  # refused by the rate limit (reason "rate")
    "rejected_cost",  # refused over the cost ceiling (reason "cost")
    "banned",  # refused by an auth-failure ban or retry-storm back-off (reason "banned")
    "timeouts",  # operations stopped by a deadline (gateway or upstream statement timeout)
    "auth_failures",  # failed logins of a known tenant
)

#: Added by migration 3: the database lifecycle (scale to zero).
USAGE_FIELDS_V3 = (
    "cold_starts",  # wakes of a sleeping database (a client was held while it woke)
    "cold_start_seconds",  # seconds those wakes took
)

#: Added by migration 4: seconds a database's own compute ran (Neon; see
#: ``Backend.compute_seconds``).
USAGE_FIELDS_V4 = (
    "compute_seconds",
)

#: Usage fields stored as real numbers (the others are integers).
REAL_USAGE_FIELDS = frozenset({"duration", "connection_seconds", "vcpu_seconds", "gb_seconds",
                               "cold_start_seconds", "compute_seconds"})

#: Numeric fields a usage event can carry; rollups sum every one of them.
USAGE_FIELDS = USAGE_FIELDS_V1 + USAGE_FIELDS_V2 + USAGE_FIELDS_V3 + USAGE_FIELDS_V4


@attrs.define
class UsageEvent:
    """A metered amount for one tenant database over a short window.

    ``id`` is set when the event is created and never changes, so a batch delivered twice
    (retry after a timeout, replay after a crash) is stored once.
    """

    tenant: str
    database: str
    kind: str = "operation"  # operation | connection | storage | lifecycle | compute
    ts: float = attrs.field(factory=time.time)
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    gateway: str = ""
    operations: int = 0
    rejected: int = 0
    errors: int = 0
    duration: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    rows: int = 0
    written: int = 0
    connections: int = 0
    connection_seconds: float = 0.0
    vcpu_seconds: float = 0.0
    gb_seconds: float = 0.0
    storage_bytes: int = 0
    rejected_connections: int = 0
    rejected_rate: int = 0
    rejected_cost: int = 0
    banned: int = 0
    timeouts: int = 0
    auth_failures: int = 0
    cold_starts: int = 0
    cold_start_seconds: float = 0.0
    compute_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class LayerReport:
    """A layer's latest findings about one subject (e.g. the intelligence layer's cost
    calibration of a backend), kept in the control plane so the CLI can read them without
    a running gateway. One row per (layer, subject): the latest writer wins."""

    layer: str
    subject: str
    body: dict[str, Any]
    gateway: str = ""
    updated_at: float = 0.0


@attrs.frozen
class UsageTotals:
    tenant: str
    database: str
    values: dict[str, float]

    def __getitem__(self, key: str) -> float:
        return self.values[key]
