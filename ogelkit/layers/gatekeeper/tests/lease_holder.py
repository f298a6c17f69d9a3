"""A stand-alone gatekeeper replica for the SIGKILL test: takes N connection leases in Redis,
prints "ready", then keeps them alive with its heartbeat until it is killed.

Usage: python lease_holder.py REDIS_URL KEY_PREFIX TENANT N LEASE_TTL
"""

from __future__ import annotations

import asyncio
import sys

from ogelkit_layer_gatekeeper import Gatekeeper, GatekeeperOptions

from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.testing import make_session, minimal_config, test_context


async def main(url: str, prefix: str, tenant: str, n: int, ttl: str) -> None:
    errors = ErrorCollector("lease_holder")
    options = structure(GatekeeperOptions, {"key_prefix": prefix, "lease_ttl": ttl}, "x", errors)
    async with test_context(minimal_config(f'[state]\nurl = "{url}"\n')) as ctx:
        layer = Gatekeeper(options, name="gatekeeper", context=ctx)
        await layer.open()
        for _ in range(n):
            await layer.on_connect(make_session(ctx, tenant=tenant))
        print("ready", ctx.gateway_id, flush=True)
        await layer.run()


if __name__ == "__main__":
    url, prefix, tenant, n, ttl = sys.argv[1:6]
    asyncio.run(main(url, prefix, tenant, int(n), ttl))
