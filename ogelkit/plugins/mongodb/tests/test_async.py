"""pymongo's asyncio API (``AsyncMongoClient``) through the gateway."""

from __future__ import annotations

import asyncio

import pytest
from pymongo.errors import OperationFailure

pytestmark = pytest.mark.anyio


async def test_async_crud_and_concurrency(make_gateway):
    gw = make_gateway()
    client = gw.async_client(gw.tenants["a"], maxPoolSize=16)
    try:
        coll = client.main.items
        await coll.insert_many([{"_id": i, "v": i * 2} for i in range(200)])
        found = await asyncio.gather(*(coll.find_one({"_id": i}) for i in range(0, 200, 5)))
        assert [d["v"] for d in found] == [i * 2 for i in range(0, 200, 5)]
        await asyncio.gather(*(coll.update_one({"_id": i}, {"$inc": {"v": 1}}) for i in range(50)))
        assert await coll.count_documents({"v": {"$mod": [2, 1]}}) == 50
        assert (await coll.delete_many({"_id": {"$gte": 100}})).deleted_count == 100
        assert await client.list_database_names() == ["main"]
    finally:
        await client.close()


async def test_async_cursors_interleaved(make_gateway):
    """Several cursors advanced concurrently: getMores land on whichever pooled connection
    is free, and each continues its own cursor."""
    gw = make_gateway()
    client = gw.async_client(gw.tenants["a"], maxPoolSize=8)
    try:
        coll = client.main.seq
        await coll.insert_many([{"i": i} for i in range(3000)])

        async def drain(lo: int) -> list[int]:
            cursor = coll.find({"i": {"$gte": lo, "$lt": lo + 600}}).sort("i", 1).batch_size(50)
            return [d["i"] async for d in cursor]

        results = await asyncio.gather(*(drain(lo) for lo in range(0, 3000, 600)))
        for lo, got in zip(range(0, 3000, 600), results, strict=True):
            assert got == list(range(lo, lo + 600))
    finally:
        await client.close()


async def test_async_isolation_and_auth_failure(make_gateway):
    gw = make_gateway({"a": {}, "b": {}})
    a = gw.async_client(gw.tenants["a"])
    b = gw.async_client(gw.tenants["b"])
    bad = gw.async_client(gw.tenants["b"], "not-the-password")
    try:
        await a.main.secret.insert_one({"a": True})
        assert await b.main.secret.find_one() is None
        with pytest.raises(OperationFailure) as err:
            await bad.main.command("ping")
        assert err.value.code == 18
    finally:
        for c in (a, b, bad):
            await c.close()
