"""The ``Backend`` and ``FrontDoor`` contracts.

A **backend** is one configured upstream server of a database kind (``[backends.<id>]``):
it owns the upstream pools, provisions tenant databases, and offers *capabilities* the
layers use (cost estimates, session settings, cancel, storage figures, sleep/wake).

A **front door** is the server side of a wire protocol (Postgres v3, RESP, OP_MSG, HTTP).
One front door runs per protocol and serves every backend that speaks it: a Postgres and a
Neon backend share port 5432, and the tenant database a client names picks the backend.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from ogelkit.component import Component, OptionsT, overridden
from ogelkit.frontdoor import FrontDoor

if TYPE_CHECKING:
    from ogelkit.control.records import DatabaseRecord, TenantRecord
    from ogelkit.model import Operation, Session
    from ogelkit.tiers import Tier


class Capability(StrEnum):
    """Names of optional backend methods; ``Backend.capabilities`` lists those implemented.

    A ``StrEnum``: members compare equal to (and hash like) their string values, so
    ``"estimate_cost" in backend.capabilities`` and ``Capability.ESTIMATE_COST in ...``
    both work, and ``for c in Capability`` lists every optional method."""

    ESTIMATE_COST = "estimate_cost"
    SESSION_SETTINGS = "session_settings"
    STORAGE_BYTES = "storage_bytes"
    SLEEP = "sleep"
    WAKE = "wake"
    BRANCH = "branch"
    RESET = "reset"
    CONSOLE = "console"


class Backend(Component[OptionsT]):
    """Base class for database backends. ``type_name`` is also the database *kind*."""

    protocol: ClassVar[str] = ""  # front door protocol, e.g. "postgres" for postgres and neon
    #: Deprecated: register the door with ``register.frontdoor(cls)`` instead.
    frontdoor: ClassVar[type[FrontDoor] | None] = None
    capabilities: ClassVar[frozenset[str]] = frozenset()

    _OPTIONAL: ClassVar[tuple[str, ...]] = (
        Capability.ESTIMATE_COST, Capability.SESSION_SETTINGS, Capability.STORAGE_BYTES,
        Capability.SLEEP, Capability.WAKE, Capability.BRANCH, Capability.RESET,
        Capability.CONSOLE,
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.capabilities = overridden(cls, Backend, Backend._OPTIONAL)

    @property
    def kind(self) -> str:
        return self.type_name

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Prepare to serve (admin connections, pools are opened lazily)."""

    async def close(self) -> None:
        """Close every upstream connection."""

    async def check(self) -> None:
        """Readiness probe: return if the upstream answers, raise otherwise (``/readyz``)."""

    # -- provisioning ------------------------------------------------------------------------
    async def provision(self, tenant: TenantRecord, name: str, tier: Tier) -> dict[str, Any]:
        """Create tenant database ``name`` upstream; return the upstream connection details.

        Must be idempotent: rerunning after a failure half-way completes the job. The
        returned mapping is stored encrypted in the control plane and handed back to the
        backend as ``DatabaseRecord.upstream``.
        """
        raise NotImplementedError(f"backend type {self.type_name!r} cannot provision databases")

    async def deprovision(self, tenant: TenantRecord, db: DatabaseRecord) -> None:
        """Drop the tenant database upstream (idempotent)."""
        raise NotImplementedError(f"backend type {self.type_name!r} cannot delete databases")

    def connection_string(self, tenant: TenantRecord, db: DatabaseRecord, password: str | None,
                          host: str, port: int) -> str:
        """A connection string for the tenant's ordinary driver, pointing at the gateway."""
        raise NotImplementedError

    async def branch(self, tenant: TenantRecord, parent: DatabaseRecord, name: str,
                     tier: Tier) -> dict[str, Any]:
        """Create tenant database ``name`` as a branch of ``parent``: a copy of its data as of
        now that then diverges. Returns the upstream details like ``provision`` (record the
        parent's name as ``"parent"`` so ``reset`` finds it). Optional (``Capability.BRANCH``).
        """
        raise NotImplementedError(f"backend type {self.type_name!r} cannot branch databases")

    async def reset(self, tenant: TenantRecord, db: DatabaseRecord) -> dict[str, Any] | None:
        """Throw away a branch's changes: its data becomes its parent's current data. Returns
        new upstream details, or None when they did not change. Optional
        (``Capability.RESET``)."""
        raise NotImplementedError(f"backend type {self.type_name!r} cannot reset databases")

    async def on_tier_change(self, tenant: TenantRecord, db: DatabaseRecord, tier: Tier) -> None:
        """Adjust upstream defence-in-depth limits (e.g. a role's connection limit)."""

    # -- capabilities (optional) -------------------------------------------------------------
    def cost_key(self, op: Operation) -> Hashable | None:
        """A normalised form of the operation for caching its cost; None = never costed."""
        return None

    async def estimate_cost(self, op: Operation) -> float | None:
        """Estimated cost of ``op`` in the backend's units (Postgres planner units)."""
        return None

    def session_settings(self, session: Session) -> dict[str, str]:
        """Upstream settings for this session's tier, applied at every checkout."""
        return {}

    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        """Bytes the tenant database occupies upstream."""
        return None

    async def sleep(self, db: DatabaseRecord) -> None:
        """Lifecycle: release what ``db`` holds upstream (pooled connections, a compute).
        Called by the gateway running the scheduler once ``db`` had no client for its
        tier's ``idle_before_sleep``, by every other replica to release its own share, and
        by ``ogelkit databases sleep``. Must be idempotent. See docs/dev/interfaces.md."""

    async def wake(self, db: DatabaseRecord) -> None:
        """Lifecycle: get a sleeping ``db`` ready; return when a client can be served. The
        gateway holds the database's clients meanwhile (one wake per database, however
        many clients), bounded by ``[lifecycle] wake_timeout``; a raise leaves it asleep.
        Must tolerate a concurrent wake from another replica."""

    def console_operation(self, request: dict[str, Any]) -> tuple[str, str, str]:
        """Studio's console: ``(kind, name, text)`` of the ``Operation`` that a console
        ``request`` (``{sql}``, ``{command}``, ``{document}`` or ``{function}``, see
        docs/dev/interfaces.md) is, so the layers decide on it as on a client's; raise
        ``ValueError`` for a request this backend does not take. With ``console``
        (``Capability.CONSOLE``)."""
        raise ValueError(f"{self.type_name} databases have no console")

    async def console(self, db: DatabaseRecord, request: dict[str, Any],
                      session: Session) -> dict[str, Any]:
        """Run one console request upstream as the tenant database ``db`` (admitted through
        the layers already; ``session.settings`` holds the session layer's settings) and
        return a JSON-able result: ``{columns, rows, command}`` for tabular answers,
        ``{result}`` otherwise. Cancelled (the task) when the timeout layer's deadline
        passes. Raise ``ValueError`` for the client's mistakes (bad SQL, an unknown
        command): the message is shown to the user. Optional (``Capability.CONSOLE``)."""
        raise NotImplementedError(f"backend type {self.type_name!r} has no console")

    def compute_seconds(self) -> dict[tuple[str, str], float]:
        """Usage: seconds of compute that ran for each ``(tenant, database)`` since the
        previous call (the call consumes them), for backends that run a compute per
        database (Neon). The usage layer asks once per usage window and meters them as
        ``compute_seconds``. Must be cheap and must not block: no I/O. Default: none."""
        return {}

    async def running(self, db: DatabaseRecord) -> bool | None:
        """Lifecycle, at gateway start: whether anything runs upstream for ``db`` (a
        compute process). ``False`` marks an active/idle database asleep; ``None`` (the
        default) means the question does not apply."""
        return None
