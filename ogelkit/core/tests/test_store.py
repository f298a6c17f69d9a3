"""The control plane store on SQLite and on PostgreSQL: one schema, same behaviour."""

import sqlite3
import time

import anyio
import asyncpg
import pytest

from ogelkit.control import AlreadyExists, DatabaseRecord, NotFound, UsageEvent, open_store
from ogelkit.control.schema import LATEST
from ogelkit.control.store import StoreError
from ogelkit.scram import make_verifier
from ogelkit.testing import test_secret_key

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(control_url):
    s = open_store(control_url, test_secret_key())
    await s.open()
    assert await s.migrate() == list(range(1, LATEST + 1))
    try:
        yield s
    finally:
        await s.close()


async def _raw(store, sql):
    """Read the tables behind the store's back, as an attacker with a copy of it would."""
    if store.dialect == "sqlite":
        conn = sqlite3.connect(store.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    conn = await asyncpg.connect(store.url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_migrations_are_idempotent(store):
    assert await store.migrate() == []
    assert await store.schema_version() == LATEST


async def test_tenants_lifecycle(store):
    t = await store.create_tenant("acme", "free")
    assert (t.slug, t.tier, t.status) == ("acme", "free", "active")
    with pytest.raises(AlreadyExists):
        await store.create_tenant("acme", "pro")
    before = time.time()
    await anyio.sleep(0.01)
    t2 = await store.update_tenant("acme", tier="pro")
    assert t2.tier == "pro" and t2.updated_at > t.updated_at
    assert [x.slug for x in await store.tenants_changed_since(before)] == ["acme"]
    t3 = await store.update_tenant("acme", status="suspended")
    assert t3.suspended and t3.tier == "pro" and t3.updated_at > t2.updated_at
    with pytest.raises(StoreError):
        await store.update_tenant("acme", status="zombie")
    assert [x.slug for x in await store.list_tenants()] == ["acme"]
    await store.delete_tenant("acme")
    assert await store.get_tenant("acme") is None
    with pytest.raises(NotFound):
        await store.delete_tenant("acme")


async def test_no_plaintext_password_is_ever_stored(store):
    await store.create_tenant("acme", "free")
    with pytest.raises(StoreError):
        await store.set_verifier("acme", "hunter2")
    await store.set_verifier("acme", str(make_verifier("hunter2-password")))
    await store.put_database(DatabaseRecord("acme", "main", "postgres", "pg",
                                            {"user": "t_acme", "password": "upstream-secret-pw"}))
    dump = repr(await _raw(store, "SELECT * FROM credentials")) + repr(
        await _raw(store, "SELECT * FROM databases")) + repr(await _raw(store, "SELECT * FROM tenants"))
    assert "hunter2-password" not in dump
    assert "upstream-secret-pw" not in dump and "t_acme" not in dump  # encrypted at rest
    assert "SCRAM-SHA-256$4096:" in dump
    db = await store.get_database("acme", "main")
    assert db.upstream == {"user": "t_acme", "password": "upstream-secret-pw"}


async def test_wrong_secret_key_cannot_read_upstream_details(store, control_url):
    await store.create_tenant("acme", "free")
    await store.put_database(DatabaseRecord("acme", "main", "redis", "r", {"password": "x"}))
    other = open_store(control_url, "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMTI=")
    await other.open()
    try:
        with pytest.raises(StoreError, match="wrong secret_key"):
            await other.get_database("acme", "main")
    finally:
        await other.close()


async def test_databases(store):
    await store.create_tenant("acme", "free")
    await store.create_tenant("zeta", "pro")
    await store.put_database(DatabaseRecord("acme", "main", "postgres", "pg", {"v": 1}))
    await store.put_database(DatabaseRecord("acme", "cache", "redis", "r", {}))
    await store.put_database(DatabaseRecord("zeta", "main", "postgres", "pg", {}))
    # Provisioning again (idempotent) refreshes the details and keeps the row.
    await store.put_database(DatabaseRecord("acme", "main", "postgres", "pg", {"v": 2}))
    assert [d.name for d in await store.list_databases("acme")] == ["cache", "main"]
    assert (await store.get_database("acme", "main")).upstream == {"v": 2}
    assert len(await store.list_databases()) == 3
    await store.set_database_state("acme", "main", "asleep")
    assert (await store.get_database("acme", "main")).state == "asleep"
    await store.delete_database("acme", "cache")
    with pytest.raises(NotFound):
        await store.delete_database("acme", "cache")
    await store.delete_tenant("acme")  # cascades to its databases
    assert await store.list_databases("acme") == []


async def test_usage_is_deduplicated_and_rolled_up(store):
    hour = 1_795_600_800.0  # an hour boundary
    events = [
        UsageEvent("acme", "main", ts=hour + 10, operations=5, duration=0.5, bytes_in=100,
                   rows=7, vcpu_seconds=0.25, storage_bytes=1000),
        UsageEvent("acme", "main", ts=hour + 20, operations=3, rejected=1, bytes_out=50,
                   storage_bytes=3000),
        UsageEvent("acme", "other", ts=hour + 3700, operations=2),
    ]
    assert await store.record_usage(events) == 3
    # Replaying the same batch (a retry after a lost acknowledgement) counts nothing twice.
    assert await store.record_usage(events) == 0
    assert await store.record_usage([events[0], UsageEvent("acme", "main", ts=hour + 30,
                                                           operations=1)]) == 1
    totals = {t.database: t for t in await store.usage_totals("acme", hour, hour + 7200)}
    main = totals["main"]
    assert main["operations"] == 9 and main["rejected"] == 1 and main["rows"] == 7
    assert main["bytes_in"] == 100 and main["bytes_out"] == 50
    assert main["duration"] == pytest.approx(0.5) and main["vcpu_seconds"] == pytest.approx(0.25)
    assert main["storage_bytes"] == 3000  # a snapshot: the maximum, not a sum
    assert totals["other"]["operations"] == 2
    only = await store.usage_totals("acme", hour, hour + 7200, database="other")
    assert [t.database for t in only] == ["other"]
    assert await store.usage_totals("acme", hour + 7200, hour + 9000) == []
    assert await store.count_usage_events("acme") == 4


async def test_concurrent_usage_writers_do_not_double_count(store):
    hour = 1_795_600_800.0
    batch = [UsageEvent("acme", "main", ts=hour + i, operations=1) for i in range(50)]
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(store.record_usage, batch)
    (total,) = await store.usage_totals("acme", hour, hour + 3600)
    assert total["operations"] == 50
