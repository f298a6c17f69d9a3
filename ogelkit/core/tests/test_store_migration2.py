"""Migration 2 (usage rejection breakdown, layer reports) on both control plane engines."""

import pytest

from ogelkit.control import LayerReport, UsageEvent, open_store
from ogelkit.control import store as store_module
from ogelkit.control.records import USAGE_FIELDS, USAGE_FIELDS_V2
from ogelkit.control.schema import MIGRATIONS
from ogelkit.testing import test_secret_key

pytestmark = pytest.mark.anyio

HOUR = 1_795_600_800.0


@pytest.fixture
async def store(control_url):
    s = open_store(control_url, test_secret_key())
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def test_upgrading_a_version_1_store_keeps_its_usage(control_url, monkeypatch):
    store = open_store(control_url, test_secret_key())
    await store.open()
    try:
        monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
        assert await store.migrate() == [1]
        async with store.tx() as tx:  # a row written by a version-1 gateway
            await tx.execute("INSERT INTO usage_events (id, ts, tenant, dbname, kind, operations) "
                             "VALUES ('old', ?, 'acme', 'main', 'operation', 7)", HOUR + 1)
            await tx.execute("INSERT INTO usage_rollups (tenant, dbname, hour, operations) "
                             "VALUES ('acme', 'main', ?, 7)", HOUR)
        monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
        assert await store.migrate() == [v for v, _, _ in MIGRATIONS[1:]]  # 2 and later
        assert await store.migrate() == []
        assert await store.schema_version() == MIGRATIONS[-1][0]

        await store.record_usage([UsageEvent("acme", "main", ts=HOUR + 5, operations=1,
                                             rejected=4, rejected_rate=3, banned=1,
                                             timeouts=2, auth_failures=5)])
        (total,) = await store.usage_totals("acme", HOUR, HOUR + 3600)
        assert total["operations"] == 8  # the old row still counts
        assert total["rejected_rate"] == 3 and total["banned"] == 1
        assert total["timeouts"] == 2 and total["auth_failures"] == 5
        assert total["rejected_connections"] == 0 and total["rejected_cost"] == 0
        assert set(total.values) == set(USAGE_FIELDS)
    finally:
        await store.close()


async def test_new_fields_are_deduplicated_and_rolled_up(store):
    events = [UsageEvent("acme", "main", ts=HOUR + i, **dict.fromkeys(USAGE_FIELDS_V2, i + 1))
              for i in range(3)]
    assert await store.record_usage(events) == 3
    assert await store.record_usage(events) == 0  # a replay counts nothing twice
    (total,) = await store.usage_totals("acme", HOUR, HOUR + 3600)
    for name in USAGE_FIELDS_V2:
        assert total[name] == 6, name


async def test_layer_reports_keep_the_latest_per_subject(store):
    assert await store.layer_reports("intelligence") == []
    await store.put_layer_report(LayerReport("intelligence", "calibration:pg", {"n": 1},
                                             gateway="gw-a", updated_at=100.0))
    await store.put_layer_report(LayerReport("intelligence", "calibration:mongo", {"n": 2},
                                             gateway="gw-a", updated_at=101.0))
    await store.put_layer_report(LayerReport("other", "calibration:pg", {"x": True}))
    await store.put_layer_report(LayerReport("intelligence", "calibration:pg",
                                             {"n": 3, "tiers": {"free": 1.5}}, gateway="gw-b",
                                             updated_at=102.0))
    reports = await store.layer_reports("intelligence")
    assert [(r.subject, r.body, r.gateway, r.updated_at) for r in reports] == [
        ("calibration:mongo", {"n": 2}, "gw-a", 101.0),
        ("calibration:pg", {"n": 3, "tiers": {"free": 1.5}}, "gw-b", 102.0),
    ]
    (one,) = await store.layer_reports("other", "calibration:pg")
    assert one.body == {"x": True} and one.updated_at > 0
