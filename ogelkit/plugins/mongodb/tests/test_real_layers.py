"""The project's own timeout and cost layers through the MongoDB front door (end to end)."""

from __future__ import annotations

import time

import pytest
from mongo_support import upstream_client
from pymongo.errors import OperationFailure

SLOW = [{"$group": {"_id": "$s", "n": {"$sum": "$i"}}}, {"$sort": {"n": -1}}]


def _load(coll, n: int) -> None:
    coll.insert_many([{"i": i, "s": f"v{i % 977}", "pad": "p" * 50} for i in range(n)])


def test_timeout_layer_cancels_with_50_and_a_tier_hint(make_gateway):
    # No session layer: the upstream gets no maxTimeMS, so only the gateway can stop it.
    gw = make_gateway(session=False, layers=(
        '[[layers]]\ntype = "timeout"\ngrace = "0s"\n\n'
        '[tiers.free]\nstatement_timeout = "100ms"\n\n'))
    db = gw.client(gw.tenants["a"]).main
    with upstream_client(gw.upstream) as direct:  # loading through the gateway would time out
        _load(direct[gw.upstream_db(gw.tenants["a"])].slow, 20_000)
    started = time.monotonic()
    with pytest.raises(OperationFailure) as err:
        list(db.slow.aggregate(SLOW))
    assert err.value.code == 50, err.value.details
    assert err.value.details.get("reason") == "timeout"
    assert time.monotonic() - started < 5
    # The client goes on (small commands: under 100 ms even on a busy machine).
    assert db.command("ping")["ok"] == 1.0
    assert db.empty.find_one() is None


def test_cost_layer_refuses_big_scans_on_free_and_allows_them_on_pro(make_gateway):
    gw = make_gateway({"free": {"tier": "free"}, "pro": {"tier": "pro"}},
                      layers='[[layers]]\ntype = "cost"\n\n',
                      backend_extra="cost_per_document = 100.0")
    free = gw.client(gw.tenants["free"]).main
    pro = gw.client(gw.tenants["pro"]).main
    for db in (free, pro):
        db.c.insert_many([{"k": i % 7} for i in range(200)])  # a scan: 200 x 100 = 20,000
    with pytest.raises(OperationFailure) as err:
        free.c.find_one({"k": 3})
    assert err.value.code == 13 and err.value.details.get("reason") == "cost"
    assert pro.c.find_one({"k": 3})["k"] == 3  # pro's ceiling is 200,000
    assert free.c.insert_one({"k": 1}).acknowledged  # writes are not costed
    assert list(free.c.find().limit(50))  # an early-stopping scan is cheap: 50 x 100
