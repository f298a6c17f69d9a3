"""The directory's cache: a tenant change seen by the gateway keeps the tenant served (under
its new state) while the control plane is unreachable."""

from __future__ import annotations

import pytest

from ogelkit.control import open_store
from ogelkit.directory import Directory
from ogelkit.testing import test_secret_key
from ogelkit.tiers import DEFAULT_TIER_TABLE

pytestmark = pytest.mark.anyio


class Down(Exception):
    pass


@pytest.fixture
async def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/control.db", test_secret_key())
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def _break(store, monkeypatch):
    async def fail(*_a, **_k):
        raise Down("control plane down")
    for name in ("get_tenant", "get_verifier", "list_databases"):
        monkeypatch.setattr(store, name, fail)


async def test_a_changed_tenant_is_served_from_cache_under_its_new_tier(store, monkeypatch):
    await store.create_tenant("acme", "free")
    directory = Directory(store, DEFAULT_TIER_TABLE, ttl=60.0)
    assert (await directory.lookup("acme")).tier.name == "free"

    directory.apply(await store.update_tenant("acme", tier="pro"))
    _break(store, monkeypatch)
    entry = await directory.lookup("acme")  # stale, the store is down: the cached entry
    assert entry is not None
    assert entry.tenant.tier == "pro" and entry.tier.name == "pro"


async def test_a_changed_tenant_is_refetched_when_the_store_is_up(store):
    await store.create_tenant("acme", "free")
    directory = Directory(store, DEFAULT_TIER_TABLE, ttl=60.0)
    first = await directory.lookup("acme")
    directory.apply(await store.update_tenant("acme", status="suspended"))
    again = await directory.lookup("acme")
    assert again is not first  # a fresh entry, not the cached one within its ttl
    assert again.tenant.suspended


async def test_an_unknown_tenant_needs_the_store(store, monkeypatch):
    directory = Directory(store, DEFAULT_TIER_TABLE, ttl=60.0)
    _break(store, monkeypatch)
    with pytest.raises(Down):
        await directory.lookup("nobody")


async def test_concurrent_lookups_of_one_tenant_share_one_fetch(store, monkeypatch):
    import anyio

    await store.create_tenant("acme", "free")
    directory = Directory(store, DEFAULT_TIER_TABLE, ttl=60.0)
    calls = 0
    real = store.get_tenant

    async def counted(slug):
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        return await real(slug)

    monkeypatch.setattr(store, "get_tenant", counted)
    results = []

    async def one():
        results.append(await directory.lookup("acme"))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(one)
    assert calls == 1
    assert len(results) == 50 and all(r is results[0] for r in results)


async def test_a_cancelled_lookup_does_not_cancel_the_others(store):
    import anyio

    await store.create_tenant("acme", "free")
    directory = Directory(store, DEFAULT_TIER_TABLE, ttl=60.0)
    with anyio.move_on_after(0):
        await directory.lookup("acme")  # cancelled at once
    entry = await directory.lookup("acme")
    assert entry is not None and entry.tenant.slug == "acme"
