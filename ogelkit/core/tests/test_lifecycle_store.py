"""Migration 3 (the database lifecycle) and the store's lifecycle calls, on both engines."""

import time

import pytest

from ogelkit.control import DatabaseRecord, UsageEvent, open_store
from ogelkit.control import store as store_module
from ogelkit.control.records import USAGE_FIELDS_V3
from ogelkit.control.schema import MIGRATIONS
from ogelkit.testing import test_secret_key

pytestmark = pytest.mark.anyio

HOUR = 1_795_600_800.0


@pytest.fixture
async def store(control_url):
    s = open_store(control_url, test_secret_key())
    await s.open()
    await s.migrate()
    await s.create_tenant("acme", "free")
    await s.put_database(DatabaseRecord("acme", "main", "postgres", "pg", {"dbname": "x"}))
    try:
        yield s
    finally:
        await s.close()


async def test_a_version_2_store_upgrades_and_keeps_its_databases(control_url, monkeypatch):
    store = open_store(control_url, test_secret_key())
    await store.open()
    try:
        monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:2])
        assert await store.migrate() == [1, 2]
        await store.create_tenant("old", "free")
        async with store.tx() as tx:  # a row written by a version-2 gateway
            await tx.execute("INSERT INTO databases (tenant, name, kind, backend, upstream, "
                             "state, created_at) VALUES ('old', 'main', 'postgres', 'pg', ?, "
                             "'active', 1)", store.box.seal({"dbname": "o"}))
        monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
        assert await store.migrate() == [3, 4]
        db = await store.get_database("old", "main")
        assert db is not None and db.state == "active" and db.upstream == {"dbname": "o"}
        assert db.last_active_at == 0 and db.last_cold_start_at is None
        assert db.requested_state is None
    finally:
        await store.close()


async def test_transition_is_a_compare_and_set(store):
    assert await store.transition("acme", "main", "idle", expect=("active",))
    assert not await store.transition("acme", "main", "idle", expect=("active",))
    await store.touch_databases([("acme", "main", 1000.0)])
    # A client was seen after the cutoff: the sleep does not win.
    assert not await store.transition("acme", "main", "asleep", expect=("idle",),
                                      quiet_since=999.0)
    assert await store.transition("acme", "main", "asleep", expect=("idle",),
                                  quiet_since=1000.0)
    await store.touch_databases([("acme", "main", 10.0)])  # older: the latest time wins
    (row,) = await store.database_states()
    assert (row.state, row.last_active_at) == ("asleep", 1000.0)
    assert await store.transition("acme", "main", "active", cold_start_seconds=0.25)
    db = await store.get_database("acme", "main")
    assert db.state == "active" and db.last_cold_start_seconds == 0.25
    assert db.last_cold_start_at == pytest.approx(time.time(), abs=60)


async def test_requests_and_the_leader_row(store):
    await store.request_database_state("acme", "main", "asleep")
    (row,) = await store.database_states()
    assert row.requested_state == "asleep"
    assert await store.transition("acme", "main", "asleep", clear_request=True)
    (row,) = await store.database_states()
    assert row.requested_state is None and row.state == "asleep"
    with pytest.raises(store_module.NotFound):
        await store.request_database_state("acme", "nope", "active")
    assert await store.lifecycle_leader() is None
    await store.lifecycle_heartbeat("gw-1")
    await store.lifecycle_heartbeat("gw-2")
    gateway, at = await store.lifecycle_leader()
    assert gateway == "gw-2" and at == pytest.approx(time.time(), abs=60)


async def test_cold_starts_are_usage_fields(store):
    events = [UsageEvent("acme", "main", kind="lifecycle", ts=HOUR + i, cold_starts=1,
                         cold_start_seconds=0.5) for i in range(3)]
    assert await store.record_usage(events) == 3
    assert await store.record_usage(events) == 0
    (total,) = await store.usage_totals("acme", HOUR, HOUR + 3600)
    assert total["cold_starts"] == 3 and total["cold_start_seconds"] == pytest.approx(1.5)
    assert set(USAGE_FIELDS_V3) <= set(total.values)
