"""Issue 16, item 5: 500 concurrent logins leave the control plane healthy, on SQLite and on
PostgreSQL.

Real asyncpg clients through a real gateway: good logins, unknown tenants, wrong passwords
and logins abandoned half-way (the client cancels), all at once, with a cache TTL short
enough that lookups keep going to the store. Every login either succeeds or gets a clean
protocol error; none sees the store fail (08006); the store works afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter

import asyncpg
import httpx
import pytest
from ogelkit_postgres.testing import Tenant, pg_gateway, unique

from ogelkit.control.sqlite import SqliteStore
from ogelkit.testing.services import scratch_pg_database

TENANTS = [Tenant(unique("ccr")) for _ in range(5)]
LOGINS = 500


@pytest.fixture(params=["sqlite", "postgres"])
def control_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
    else:
        with scratch_pg_database("ogelkit_ccr") as url:
            yield url


async def one_login(gw, kind: str) -> str:
    tenant = random.choice(TENANTS)
    kw = gw.asyncpg_kw(tenant)
    if kind == "unknown":
        kw["user"] = unique("nobody")
    elif kind == "wrong password":
        kw["password"] = "not-the-password"
    try:
        if kind == "abandoned":
            # The client gives up mid-login: its socket closes while the gateway works.
            try:
                conn = await asyncio.wait_for(asyncpg.connect(**kw, ssl=False),
                                              random.random() * 1.0)
            except TimeoutError:
                return "abandoned"
        else:
            conn = await asyncpg.connect(**kw, ssl=False, timeout=120)
        try:
            assert await conn.fetchval("SELECT 1", timeout=120) == 1
        finally:
            await conn.close(timeout=30)
        return "ok"
    except asyncpg.PostgresError as exc:
        return f"error {exc.sqlstate}"


async def storm(gw) -> Counter:
    kinds = (["good"] * 350 + ["unknown"] * 50 + ["wrong password"] * 50 + ["abandoned"] * 50)
    random.shuffle(kinds)
    results = await asyncio.gather(*(one_login(gw, k) for k in kinds), return_exceptions=True)
    outcome: Counter = Counter()
    for kind, result in zip(kinds, results, strict=True):
        if isinstance(result, BaseException):
            result = f"raised {type(result).__name__}: {result}"[:120]
        outcome[(kind, result)] += 1
    return outcome


class StoreTrouble(logging.Handler):
    """Collects the gateway's log records that say the control plane failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "control plane" in text or "locked" in text or "transaction" in text:
            self.records.append(text[:200])


@pytest.fixture
def store_trouble():
    handler = StoreTrouble()
    logger = logging.getLogger("ogelkit")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_500_concurrent_logins_leave_the_store_healthy(control_url, store_trouble):
    extra = 'cache_ttl = "100ms"\n'
    with pg_gateway(TENANTS, extra=extra, control_url=control_url,
                    backend_options="pool_size = 20\nquery_wait_timeout = \"60s\"") as gw:
        started = time.monotonic()
        outcome = asyncio.run(storm(gw))
        took = time.monotonic() - started
        print(f"{LOGINS} concurrent logins on {control_url.split(':')[0]}: {took:.1f}s, "
              f"{dict(outcome)}")
        assert store_trouble.records == []
        good = {r: n for (k, r), n in outcome.items() if k == "good"}
        assert good == {"ok": 350}, outcome
        for (kind, result), _ in outcome.items():
            if kind in ("unknown", "wrong password"):
                assert result == "error 28P01", outcome  # the same answer, by design
            if kind == "abandoned":
                assert result in ("ok", "abandoned"), outcome

        # The store works afterwards: reads, writes, readiness, logins, a tier change.
        store = gw.context.store
        gw.call(store.ping(), timeout=15)
        slug = TENANTS[0].slug
        assert gw.call(store.update_tenant(slug, tier="free"), timeout=15).tier == "free"
        assert gw.call(store.get_tenant(slug), timeout=15).tier == "free"
        assert httpx.get(gw.running.url("/readyz"), timeout=10).status_code == 200
        assert asyncio.run(one_login(gw, "good")) == "ok"
        if isinstance(store, SqliteStore):
            conn = store._conn
            assert gw.call(store._call(lambda: conn.in_transaction), timeout=15) is False
        else:
            async def stuck() -> int:
                conn = await asyncpg.connect(control_url)
                try:
                    return await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND state LIKE 'idle in transaction%'")
                finally:
                    await conn.close()
            assert asyncio.run(stuck()) == 0
