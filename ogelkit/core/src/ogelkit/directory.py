"""The gateway's cached view of the control plane: who a tenant is, its tier, credentials
and databases, and the live sessions that must hear about changes.

Front doors call ``lookup`` once per connection (not per operation). A poller picks up
tenant changes made by the CLI, the admin API or another replica within ``cache_ttl``,
updates the tier of live sessions, and closes sessions of suspended or deleted tenants.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import time
from typing import TYPE_CHECKING

import anyio
import attrs

from ogelkit.control.records import DatabaseRecord, TenantRecord
from ogelkit.model import Reason, Reject, Session
from ogelkit.scram import Verifier, mock_verifier, parse_verifier, verify_password

if TYPE_CHECKING:
    from ogelkit.audit import AuditLog
    from ogelkit.chain import Chain
    from ogelkit.control.store import Store
    from ogelkit.tiers import Tier, TierTable

log = logging.getLogger("ogelkit.directory")

DELETION_CHECK_EVERY = 5  # polls between checks for deleted tenants (one full listing each)
#: Plain-password key derivations (PBKDF2) running at once, in worker threads: one core is
#: left to the event loop, so a login storm queues logins instead of slowing every client's
#: commands (20 derivations in 20 threads on two cores delayed other tenants' PINGs 10-20 ms).
DERIVATIONS = max(1, (os.cpu_count() or 2) - 1)
#: A failed plain-password check answers no sooner than the slowest of the last
#: ``FAILED_CHECKS`` (capped at ``FAILED_FLOOR_MAX`` s): an unknown tenant's uncached lookup
#: and a known tenant's cached one then take the same time (see ``failed_check_floor``).
FAILED_CHECKS = 64
FAILED_FLOOR_MAX = 0.1


@attrs.define
class TenantEntry:
    tenant: TenantRecord
    tier: Tier
    verifier: Verifier | None
    databases: dict[str, DatabaseRecord]
    fetched_at: float


class SessionRegistry:
    """Live sessions by tenant: for tier changes, suspension, drain and the admin API."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, set[Session]] = {}

    def add(self, session: Session) -> None:
        if session.tenant is not None:
            self._by_tenant.setdefault(session.tenant.slug, set()).add(session)

    def discard(self, session: Session) -> None:
        if session.tenant is not None:
            group = self._by_tenant.get(session.tenant.slug)
            if group is not None:
                group.discard(session)
                if not group:
                    del self._by_tenant[session.tenant.slug]

    def of(self, slug: str) -> list[Session]:
        return list(self._by_tenant.get(slug, ()))

    def count(self, slug: str | None = None) -> int:
        if slug is not None:
            return len(self._by_tenant.get(slug, ()))
        return sum(len(s) for s in self._by_tenant.values())

    def tenants(self) -> list[str]:
        return list(self._by_tenant)


class Directory:
    def __init__(self, store: Store, tiers: TierTable, *, ttl: float = 2.0,
                 sessions: SessionRegistry | None = None):
        self.store = store
        self.tiers = tiers
        self.ttl = ttl
        self.sessions = sessions or SessionRegistry()
        self.chain: Chain | None = None
        self.audit: AuditLog | None = None  # set by the gateway's context
        #: (tier, status) of every tenant seen since start: what a change is measured by.
        self._known: dict[str, tuple[str, str]] = {}
        self._cache: dict[str, TenantEntry | None] = {}
        self._fetching: dict[str, asyncio.Future[TenantEntry | None]] = {}
        self._mock_secret = os.urandom(32)
        self._password_ok: dict[tuple[str, bytes], float] = {}
        self._derivations: anyio.CapacityLimiter | None = None  # made in the event loop
        self._failed: collections.deque[float] = collections.deque(maxlen=FAILED_CHECKS)
        self._last_change = time.time()
        self._polls = 0

    def tier(self, name: str) -> Tier:
        """The tier called ``name``; unknown names fall back to the lowest tier (never crash
        on a row written by a newer config)."""
        tier = self.tiers.get(name)
        return tier if tier is not None else next(iter(self.tiers.values()))

    async def lookup(self, slug: str) -> TenantEntry | None:
        now = time.monotonic()
        entry = self._cache.get(slug)
        if entry is not None and now - entry.fetched_at < self.ttl:
            return entry
        # One fetch per tenant at a time: a reconnect storm of one tenant costs the control
        # plane one round of queries, not one per connection. The fetch is shielded so a
        # caller that gives up (client reset mid-login) does not cancel it for the others.
        task = self._fetching.get(slug)
        if task is None:
            task = asyncio.ensure_future(self._fetch(slug, entry))
            self._fetching[slug] = task
            task.add_done_callback(lambda t: self._fetched(slug, t))
        return await asyncio.shield(task)

    def _fetched(self, slug: str, task: asyncio.Future[TenantEntry | None]) -> None:
        self._fetching.pop(slug, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have given up

    async def _fetch(self, slug: str, entry: TenantEntry | None) -> TenantEntry | None:
        now = time.monotonic()
        try:
            tenant = await self.store.get_tenant(slug)
            if tenant is None:
                self._cache.pop(slug, None)
                return None
            verifier_text = await self.store.get_verifier(slug)
            dbs = await self.store.list_databases(slug)
        except Exception:
            if entry is not None:  # control plane down: keep serving known tenants
                log.warning("control plane unreachable, serving %s from cache", slug)
                return entry
            raise
        entry = TenantEntry(
            tenant=tenant,
            tier=self.tier(tenant.tier),
            verifier=parse_verifier(verifier_text) if verifier_text else None,
            databases={d.name: d for d in dbs},
            fetched_at=now,
        )
        self._cache[slug] = entry
        self.remember(tenant)
        return entry

    def remember(self, tenant: TenantRecord) -> None:
        """Note a tenant's current tier and status (the "before" of a later change)."""
        self._known[tenant.slug] = (tenant.tier, tenant.status)

    def _audit_change(self, tenant: TenantRecord) -> None:
        audit = self.audit
        before = self._known.get(tenant.slug)
        self.remember(tenant)
        if audit is None or before == (tenant.tier, tenant.status):
            return
        if before is None:
            audit.record("tenant_changed", tenant=tenant.slug, tier=tenant.tier,
                         status=tenant.status)
            return
        if before[0] != tenant.tier:
            audit.record("tier_changed", tenant=tenant.slug, tier=tenant.tier,
                         previous=before[0])
        if before[1] != tenant.status:
            audit.record("tenant_suspended" if tenant.suspended else "tenant_resumed",
                         tenant=tenant.slug, status=tenant.status, previous=before[1])

    def retier(self, tiers: TierTable) -> None:
        """New tier values (config reload): cached tenants and live sessions take them, and
        the layers hear ``on_tier_change``, as for a tenant's own tier change."""
        self.tiers = tiers
        for entry in self._cache.values():
            if entry is not None:
                entry.tier = self.tier(entry.tenant.tier)
        for slug in self.sessions.tenants():
            for session in self.sessions.of(slug):
                if session.tier is not None:
                    tier = self.tier(session.tier.name)
                    if tier != session.tier:  # an unchanged tier is not a tier change
                        self._set_tier(session, tier)

    def _set_tier(self, session: Session, tier: Tier) -> None:
        if session.tier is not tier:
            session.tier = tier
            if self.chain is not None:
                self.chain.tier_changed(session)

    def invalidate(self, slug: str | None = None) -> None:
        if slug is None:
            self._cache.clear()
        else:
            self._cache.pop(slug, None)

    def verifier_for(self, slug: str, entry: TenantEntry | None) -> Verifier:
        """The tenant's verifier, or a stable fake one so unknown names look the same."""
        if entry is not None and entry.verifier is not None:
            return entry.verifier
        return mock_verifier(slug, self._mock_secret)

    async def check_password(self, entry: TenantEntry, password: str) -> bool:
        """Plain-password check (Redis AUTH) against the verifier, PBKDF2 in a thread,
        successful results cached per (tenant, keyed hash) so reconnect storms stay cheap."""
        if entry.verifier is None:
            return False
        key = (entry.tenant.slug, hmac.digest(self._mock_secret, password.encode() +
                                              entry.verifier.salt, hashlib.sha256))
        if key in self._password_ok:
            return True
        ok = await self._derive(entry.verifier, password)
        if ok:
            if len(self._password_ok) > 10_000:
                self._password_ok.clear()
            self._password_ok[key] = time.monotonic()
        return ok

    async def check_password_against(self, verifier: Verifier, password: str) -> bool:
        """The same key derivation as ``check_password``, against any verifier (the fake
        one of an unknown tenant), so a plain-password answer takes the same time."""
        return await self._derive(verifier, password)

    async def _derive(self, verifier: Verifier, password: str) -> bool:
        """``verify_password`` in a worker thread, at most ``DERIVATIONS`` at a time."""
        if self._derivations is None:
            self._derivations = anyio.CapacityLimiter(DERIVATIONS)
        return await anyio.to_thread.run_sync(verify_password, verifier, password,
                                              limiter=self._derivations)

    def failed_check_floor(self, took: float) -> float:
        """A failed plain-password check took ``took`` s (lookup and derivation): how much
        longer its answer waits, so that it is no sooner than the slowest recent failure.
        Known tenants are looked up from the cache and unknown ones from the store, so the
        natural times differ by a store query; padded to the recent maximum, they do not."""
        self._failed.append(min(took, FAILED_FLOOR_MAX))
        return max(0.0, max(self._failed) - took)

    # -- change propagation ----------------------------------------------------------------
    async def poll_changes(self) -> None:
        """Apply tenant changes made elsewhere (CLI, admin API, other replicas)."""
        changed = await self.store.tenants_changed_since(self._last_change)
        for tenant in changed:
            self._last_change = max(self._last_change, tenant.updated_at)
            self.apply(tenant)
        self._polls += 1
        if self._polls % DELETION_CHECK_EVERY == 0 and self.sessions.tenants():
            # Deleted tenants leave no row to notice: compare live sessions with one listing.
            existing = {t.slug for t in await self.store.list_tenants()}
            for slug in self.sessions.tenants():
                if slug not in existing:
                    self.invalidate(slug)
                    for session in self.sessions.of(slug):
                        session.close(Reject(Reason.UNKNOWN, "tenant was deleted"))

    def apply(self, tenant: TenantRecord) -> None:
        """A tenant changed: refresh live sessions now, and mark the cached entry stale.

        The entry is kept (with the new record and tier) rather than dropped, so that while
        the control plane is unreachable the tenant is still served, under its new state."""
        self._audit_change(tenant)
        entry = self._cache.get(tenant.slug)
        if entry is not None:
            entry.tenant = tenant
            entry.tier = self.tier(tenant.tier)
            entry.fetched_at = float("-inf")  # refetched at the next lookup
        self._password_ok = {k: v for k, v in self._password_ok.items() if k[0] != tenant.slug}
        tier = self.tier(tenant.tier)
        for session in self.sessions.of(tenant.slug):
            if tenant.suspended:
                session.close(Reject(Reason.SUSPENDED, f'tenant "{tenant.slug}" is suspended',
                                     hint="Contact the platform operator."))
                continue
            session.tenant = tenant
            self._set_tier(session, tier)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.ttl)
            try:
                await self.poll_changes()
            except Exception as exc:  # store hiccup: keep serving from the cache
                log.warning("control plane poll failed: %s", exc)
