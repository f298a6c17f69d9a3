"""redis-py asyncio clients (RESP2 and RESP3) through the gateway, in the test's own loop."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis_support import cleanup, config_text, new_tenants

from ogelkit.testing import running_gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("proto", [2, 3])
async def test_asyncio_clients(proto: int):
    tenants = new_tenants(2)
    try:
        async with running_gateway(config_text(tenants)) as gw:
            port = gw.port("redis")
            a = aioredis.Redis(port=port, username=tenants[0].slug, password=tenants[0].password,
                               protocol=proto)
            b = aioredis.Redis(port=port, username=tenants[1].slug, password=tenants[1].password,
                               protocol=proto)
            await a.set("same", "A")
            await b.set("same", "B")
            assert await a.get("same") == b"A" and await b.get("same") == b"B"
            # many concurrent clients of one tenant share the upstream connections
            results = await asyncio.gather(*(a.incr("n") for _ in range(40)))
            assert sorted(results) == list(range(1, 41))
            async with a.pipeline(transaction=True) as p:
                p.set("t", 1).incr("t").get("t")
                assert await p.execute() == [True, 2, b"2"]
            # pub/sub (RESP3: push messages)
            ps = a.pubsub()
            await ps.subscribe("chan")
            assert (await ps.get_message(timeout=2))["type"] == "subscribe"
            assert await b.publish("chan", "nope") == 0
            assert await a.publish("chan", "yes") == 1
            msg = None
            for _ in range(20):
                msg = await ps.get_message(timeout=0.2)
                if msg:
                    break
            assert msg["channel"] == b"chan" and msg["data"] == b"yes"
            await ps.aclose()
            # a blocking pop with a timeout does not stall the others
            popped, _ = await asyncio.gather(a.blpop(["bq"], timeout=1), b.incr("alive"))
            assert popped is None
            stats = gw.context.backends["r"].stats()
            key = f"{tenants[0].slug}/main"
            assert stats["upstream"][key]["shared"] <= 2
            await a.aclose()
            await b.aclose()
    finally:
        cleanup(tenants)
