"""``type = "neon"``: serverless Postgres, one branch (with its own compute) per tenant database.

``NeonBackend`` *is* a ``PostgresBackend``: the Postgres front door serves it on the same
port with the same SCRAM login, the same pools and the same seven layers. What differs is
where a pool connects: ``upstream_target`` asks the driver for the address of the
database's compute, starting it when it is asleep, and ``open_upstream`` adds the endpoint
id to the startup packet when the driver routes by it (Neon's proxy does).

Drivers: ``local`` (``ogelkit_neon.local``: a PostgreSQL 15 cluster per branch) and
``cloud`` (``ogelkit_neon.cloud``: Neon's API v2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from ogelkit_postgres import provision as prov
from ogelkit_postgres.backend import PostgresBackend
from ogelkit_postgres.upstream import UpstreamError

from ogelkit_neon.cloud import CloudDriver, CloudError
from ogelkit_neon.local import LocalDriver, LocalError
from ogelkit_neon.options import NeonOptions

if TYPE_CHECKING:

    from ogelkit import DatabaseRecord, TenantRecord, Tier

log = logging.getLogger("ogelkit.neon")


class NeonBackend(PostgresBackend):
    type_name = "neon"
    Config = NeonOptions
    protocol = "postgres"

    def __init__(self, config: NeonOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.config: NeonOptions = config
        self.driver: LocalDriver | CloudDriver
        if config.driver == "local":
            self.driver = LocalDriver(self, config.local)
        else:
            self.driver = CloudDriver(self, config.cloud)

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        await super().open()
        await self.driver.open()

    async def close(self) -> None:
        await super().close()
        await self.driver.close()

    async def check(self) -> None:
        await self.driver.check()

    # -- upstream --------------------------------------------------------------------------
    async def upstream_target(self, db: DatabaseRecord) -> tuple[str, int, str, str, str]:
        try:
            host, port = await self.driver.address(db)
        except (LocalError, CloudError) as exc:
            raise UpstreamError(f"the database's compute is not available: {exc}",
                                exc.sqlstate) from None
        up = db.upstream
        return host, port, up["role"], up["password"], up["dbname"]

    # Cloud: options=endpoint=<id> in the startup packet and TLS with SNI = the endpoint's
    # host (Neon's proxy routes on either); local: neither.
    def upstream_startup(self, db: DatabaseRecord) -> dict[str, str]:
        return self.driver.startup_params(db)

    def upstream_tls(self, db: DatabaseRecord) -> ssl.SSLContext | None:
        return self.driver.tls

    def has_clients(self, db: DatabaseRecord) -> bool:
        """Whether any server connection of ``db`` is checked out, opening or awaited."""
        pool = self.pools.get((db.tenant, db.name))
        if pool is None or pool.closed:
            return False
        return len(pool.members) > len(pool.idle) or pool.opening > 0 \
            or any(not w.done() for w in pool.waiters)

    async def _drop_connections(self, db: DatabaseRecord, *, close_pool: bool) -> None:
        pool = self.pools.get((db.tenant, db.name))
        if pool is not None:
            if close_pool:
                self.pools.pop((db.tenant, db.name), None)
                pool.close()
            else:
                pool.sleep()
        explain = self._explain.pop((db.tenant, db.name), None)
        if explain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(explain.conn.close(), 2)

    # -- provisioning ----------------------------------------------------------------------
    async def provision(self, tenant: TenantRecord, name: str, tier: Tier) -> dict[str, Any]:
        role, dbname = self.names(tenant.slug, name)
        upstream = await self.driver.provision(tenant.slug, name, tier, role, dbname,
                                               prov.new_password())
        log.info("provisioned neon database", extra={
            "tenant": tenant.slug, "database": name, "driver": self.config.driver})
        return upstream

    async def deprovision(self, tenant: TenantRecord, db: DatabaseRecord) -> None:
        await self._drop_connections(db, close_pool=True)
        await self.driver.drop(db)
        log.info("dropped neon database", extra={"tenant": tenant.slug, "database": db.name})

    async def branch(self, tenant: TenantRecord, parent: DatabaseRecord, name: str,
                     tier: Tier) -> dict[str, Any]:
        """A new tenant database ``name`` holding ``parent``'s data as of now."""
        upstream = await self.driver.branch(parent, name, tier)
        log.info("created neon branch", extra={"tenant": tenant.slug, "database": name,
                                                "parent": parent.name})
        return upstream

    async def reset(self, tenant: TenantRecord, db: DatabaseRecord) -> dict[str, Any] | None:
        """Throw ``db``'s changes away: its data becomes its parent's current data."""
        parent_name = db.upstream.get("parent")
        if not parent_name:
            raise ValueError(f"{db.name} is a root branch: it has no parent to reset to")
        parent = await self.context.store.get_database(db.tenant, parent_name)
        if parent is None:
            raise ValueError(f"the parent {parent_name} of {db.name} no longer exists")
        await self._drop_connections(db, close_pool=False)
        await self.driver.reset(db, parent)
        log.info("reset neon branch", extra={"tenant": tenant.slug, "database": db.name,
                                              "parent": parent_name})
        return None

    async def on_tier_change(self, tenant: TenantRecord, db: DatabaseRecord, tier: Tier) -> None:
        pool = self.pools.get((db.tenant, db.name))
        if pool is not None:
            pool.set_tier(tier)
        await self.driver.on_tier_change(db, tier)

    # -- capabilities ----------------------------------------------------------------------
    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        return await self.driver.storage_bytes(db)

    def compute_seconds(self) -> dict[tuple[str, str], float]:
        return self.driver.compute_seconds()

    async def running(self, db: DatabaseRecord) -> bool | None:
        return await self.driver.running(db)

    async def sleep(self, db: DatabaseRecord) -> None:
        """Close the pooled connections, then stop (suspend) the compute."""
        await self._drop_connections(db, close_pool=False)
        await self.driver.stop(db)

    async def wake(self, db: DatabaseRecord) -> None:
        """Start the compute and wait until it answers, then refill the pool's floor."""
        try:
            await self.driver.start(db)
        except (LocalError, CloudError) as exc:
            raise UpstreamError(f"the database's compute did not start: {exc}",
                                exc.sqlstate) from None
        await super().wake(db)

    def describe(self) -> dict[str, Any]:
        return {"pools": super().describe(), "driver": self.config.driver,
                **self.driver.describe()}
