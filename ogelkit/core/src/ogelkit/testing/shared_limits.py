"""Checks that a tier limit holds across several gateways (replicas sharing ``[state]``, or
the workers of one gateway): used by the replica and worker suites alike."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any


async def close_all(conns: Sequence[Any]) -> None:
    """Close every asyncpg connection, ignoring those already gone."""
    for c in conns:
        with contextlib.suppress(Exception):
            await c.close(timeout=5)


async def check_shared_rate_limit(conns: Sequence[Any], *, rate: float, burst: float,
                                  duration: float, label: str) -> None:
    """Offer ``SELECT 1`` as fast as possible on every connection (one per gateway) for
    ``duration`` seconds and check that the tenant's token bucket (``rate``/s, ``burst``) was
    shared: in total no more than the bucket allows and not far below it, far more refused
    (53400) than admitted, and every gateway admitted its share. Closes the connections."""
    import asyncpg

    admitted = [0] * len(conns)
    refusals = [0] * len(conns)
    try:
        await asyncio.sleep(burst / rate + 0.3)  # a full bucket to start from
        started = time.monotonic()

        async def hammer(i: int) -> None:
            while time.monotonic() - started < duration:
                try:
                    await conns[i].execute("SELECT 1")
                    admitted[i] += 1
                except asyncpg.PostgresError as exc:
                    assert exc.sqlstate == "53400", exc
                    refusals[i] += 1
                await asyncio.sleep(0.005)

        await asyncio.gather(*(hammer(i) for i in range(len(conns))))
        elapsed = time.monotonic() - started
    finally:
        await close_all(conns)
    total = sum(admitted)
    print(f"rate across {label}: admitted {admitted} = {total} in {elapsed:.2f}s, "
          f"refused {sum(refusals)}; bound {burst + rate * elapsed:.0f}")
    assert total <= burst + rate * elapsed + 1, (admitted, elapsed)
    assert total >= 0.7 * (burst + rate * elapsed), admitted  # and not far below it
    assert sum(refusals) > total  # offered far more than the limit
    assert all(n > 0 for n in admitted), admitted  # every gateway admitted its share
