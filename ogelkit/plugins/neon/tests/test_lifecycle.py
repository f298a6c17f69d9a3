"""The core's lifecycle on Neon-local databases: fifty databases of a 2 s idle tier go to
sleep (no compute process left), twenty clients arriving at once at a sleeping one share a
single cold start, and every database wakes with its data."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from neon_helpers import neon_gateway
from ogelkit_neon import NeonBackend
from ogelkit_neon.testing import live_postmasters
from ogelkit_postgres.testing import Tenant, unique

TIER = '[tiers.nap]\nbase = "pro"\nrank = 10\nidle_before_sleep = "2s"\n'
LIFECYCLE = '[lifecycle]\ncheck_every = "200ms"\nwake_timeout = "20s"\n'


def test_fifty_databases_sleep_to_zero_computes_and_twenty_clients_share_one_wake():
    names = tuple(f"db{i:02d}" for i in range(50))
    t = Tenant(unique("nl50"), tier="nap", databases=names, backend="neon")
    with neon_gateway([t], extra=TIER + LIFECYCLE, local="max_running_computes = 8") \
            as (gw, data_dir):
        backend = gw.context.backends["neon"]
        assert isinstance(backend, NeonBackend)

        async def touch(name: str, write: bool) -> int:
            conn = await asyncpg.connect(**gw.asyncpg_kw(t, name), timeout=30)
            try:
                if write:
                    await conn.execute(f"CREATE TABLE w AS SELECT {names.index(name)} AS v")
                return await conn.fetchval("SELECT v FROM w")
            finally:
                await conn.close()

        async def touch_all(write: bool) -> list[int]:
            return [await touch(name, write) for name in names]

        assert asyncio.run(touch_all(True)) == list(range(50))
        assert backend.driver.running_computes() <= 8  # the least recently used slept
        # A database is "asleep" from the moment the scheduler decides it; its compute's
        # fast shutdown then takes a moment more.
        deadline = time.monotonic() + 90
        while (gw.context.lifecycle.count("asleep") < 50 or live_postmasters(data_dir)
               or backend.driver.running_computes()):
            assert time.monotonic() < deadline, (gw.context.lifecycle.count("asleep"),
                                                 live_postmasters(data_dir))
            time.sleep(0.2)
        assert sum(p.stats()["size"] for p in gw.pools().values()) == 0

        compute = backend.driver.computes[f"{t.slug}/db07"]
        starts = compute.cold_starts

        async def twenty() -> list[int]:
            return list(await asyncio.gather(*(touch("db07", False) for _ in range(20))))

        assert asyncio.run(twenty()) == [7] * 20  # all served, none refused
        assert compute.cold_starts == starts + 1  # one wake for all of them
        assert asyncio.run(touch_all(False)) == list(range(50))  # every one woke, data intact
