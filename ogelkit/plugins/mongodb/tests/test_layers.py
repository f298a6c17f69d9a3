"""What the layers get from this backend: maxTimeMS from the tier, cancellation (timeout
layer), usage figures, cost estimates; all through the real gateway with pymongo."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import bson
import pymongo
import pytest
from ogelkit_mongodb import wire
from pymongo.errors import OperationFailure

import ogelkit
from ogelkit import Layer, Reason, Reject
from ogelkit.testing import isolated_plugins


def _sent_body(op: Any) -> dict[str, Any]:
    """The command document the gateway will send upstream for ``op``."""
    data = b"".join(bytes(p) for p in op.request.parts)
    s, e = wire.reply_body(data)
    return bson.decode(data[s:e])


class Recorder(Layer):
    """Records what the front door hands the chain; optional cancel/cost behaviour."""

    type_name = "test_recorder"
    seen: ClassVar[list[dict[str, Any]]] = []
    sent: ClassVar[list[dict[str, Any]]] = []
    cancel_after: ClassVar[dict[str, float]] = {}
    cost_limit: ClassVar[float | None] = None
    costs: ClassVar[list[tuple[Any, float | None]]] = []

    def on_operation(self, op):
        if getattr(op.request, "parts", None):
            Recorder.sent.append({"name": op.name, "body": _sent_body(op)})
        delay = Recorder.cancel_after.get(op.name)
        if delay is not None:
            asyncio.get_running_loop().call_later(
                delay, op.cancel, Reject(Reason.TIMEOUT, "statement timeout reached",
                                         detail="limit 50ms, tier free", layer=self.name))
        backend = op.backend
        if Recorder.cost_limit is not None and backend.cost_key(op) is not None:
            return self._cost(op)
        return None

    async def _cost(self, op):
        backend = op.backend
        cost = await backend.estimate_cost(op)
        Recorder.costs.append((backend.cost_key(op), cost))
        if cost is not None and cost > Recorder.cost_limit:
            raise Reject(Reason.COST, "estimated cost over the tier's ceiling",
                         detail=f"cost {cost:.0f}, ceiling {Recorder.cost_limit:.0f}")

    def on_complete(self, op):
        Recorder.seen.append({"name": op.name, "rows": op.rows, "written": op.written,
                              "bytes_out": op.bytes_out, "error": op.error,
                              "rejection": op.rejection.reason if op.rejection else None})


class _Plugin:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(Recorder)


@pytest.fixture
def recorder():
    Recorder.seen.clear()
    Recorder.sent.clear()
    Recorder.cancel_after.clear()
    Recorder.costs.clear()
    Recorder.cost_limit = None
    yield Recorder
    Recorder.cancel_after.clear()
    Recorder.cost_limit = None


@pytest.fixture
def layered(make_gateway, recorder):
    plugins = isolated_plugins(("test_recorder", _Plugin()), entry_points=True)
    return make_gateway(layers='[[layers]]\ntype = "test_recorder"\n', plugins=plugins)


def _last(name: str) -> dict[str, Any]:
    return [s for s in Recorder.seen if s["name"] == name][-1]


def test_max_time_ms_from_the_tier_is_injected_or_capped(layered):
    db = layered.client(layered.tenants["a"]).main
    db.c.insert_one({"x": 1})
    db.c.find_one({"x": 1})
    db.command("find", "c", maxTimeMS=60_000)
    db.command("find", "c", maxTimeMS=500)
    db.command("count", "c")
    finds = [s["body"] for s in Recorder.sent if s["name"] == "find"]
    assert [f["maxTimeMS"] for f in finds] == [10_000, 10_000, 500]  # free tier: 10 s
    assert [s["body"]["maxTimeMS"] for s in Recorder.sent if s["name"] == "count"] == [10_000]
    inserts = [s["body"] for s in Recorder.sent if s["name"] == "insert"]
    assert inserts and "maxTimeMS" not in inserts[0]
    assert all(s["body"]["$db"] == layered.upstream_db(layered.tenants["a"]) for s in Recorder.sent)
    assert db.c.distinct("x") == [1]
    distinct = [s["body"] for s in Recorder.sent if s["name"] == "distinct"][-1]
    backend = layered.context.backends["mongo"]
    if "ferretdbVersion" in backend.build_info:  # FerretDB 1.x refuses maxTimeMS on distinct
        assert "maxTimeMS" not in distinct and backend.killop is False
    else:
        assert distinct["maxTimeMS"] == 10_000


def test_session_settings_of_the_backend(layered):
    backend = layered.context.backends["mongo"]
    from ogelkit.testing import make_session
    for tier, ms in (("free", "10000"), ("pro", "60000"), ("enterprise", "120000")):
        assert backend.session_settings(make_session(layered.context, tier=tier)) == {"maxTimeMS": ms}


def test_timeout_cancels_upstream_and_answers_50(layered, recorder):
    db = layered.client(layered.tenants["a"]).main
    db.slow.insert_many([{"i": i, "s": f"v{i % 977}", "pad": "p" * 50} for i in range(20_000)])
    recorder.cancel_after["aggregate"] = 0.05
    started = time.monotonic()
    with pytest.raises(OperationFailure) as err:
        list(db.slow.aggregate([{"$group": {"_id": "$s", "n": {"$sum": "$i"}}},
                                {"$sort": {"n": -1}}]))
    assert err.value.code == 50 and "statement timeout" in str(err.value)
    assert err.value.details["detail"] == "limit 50ms, tier free"
    assert time.monotonic() - started < 5
    assert _last("aggregate")["rejection"] == Reason.TIMEOUT
    recorder.cancel_after.clear()
    assert db.slow.count_documents({"i": {"$lt": 10}}) == 10  # the client keeps working
    backend = layered.context.backends["mongo"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and backend.pool.stats()["live"] != backend.pool.stats()["idle"]:
        time.sleep(0.05)
    assert backend.pool.stats()["live"] == backend.pool.stats()["idle"]


def test_usage_figures(layered):
    db = layered.client(layered.tenants["a"]).main
    db.u.insert_many([{"i": i} for i in range(25)])
    assert _last("insert")["written"] == 25
    list(db.u.find({"i": {"$lt": 7}}))
    find = _last("find")
    assert find["rows"] == 7 and find["bytes_out"] > 7 * 20 and find["error"] is None
    db.u.update_many({"i": {"$lt": 5}}, {"$set": {"x": 1}})
    assert _last("update")["written"] == 5
    db.u.update_one({"i": 1000}, {"$set": {"x": 1}}, upsert=True)
    assert _last("update")["written"] == 1
    db.u.delete_many({"i": {"$gte": 20}})
    assert _last("delete")["written"] == 6
    assert db.u.count_documents({}) == 20
    assert _last("aggregate")["rows"] == 1  # count_documents is an aggregate
    assert db.u.find_one_and_delete({"i": 0})["i"] == 0
    fam = _last("findAndModify")
    assert (fam["rows"], fam["written"]) == (1, 1)
    with pytest.raises(OperationFailure):
        db.command("find", "u", filter={"$bogus": 1})
    assert _last("find")["error"] is not None
    with pytest.raises(OperationFailure):
        db.command("getParameter", 1)
    assert _last("getParameter")["rejection"] == Reason.FORBIDDEN


def test_cost_estimates_and_ceiling(layered, recorder):
    db = layered.client(layered.tenants["a"]).main
    db.big.insert_many([{"i": i, "k": i % 10} for i in range(600)])
    recorder.cost_limit = 1_000_000.0
    db.big.find_one({"k": 3})
    db.big.find_one({"k": 4})
    list(db.big.find().limit(5))
    (k1, c1), (k2, _), (k3, c3) = recorder.costs[-3:]
    assert k1 == k2 and k1 != k3  # the same shape shares one cached estimate
    per_doc = layered.context.backends["mongo"].options.cost_per_document
    assert c1 == pytest.approx(600 * per_doc)  # a scan of the whole collection
    assert c3 == pytest.approx(5 * per_doc)  # unfiltered with a limit stops early
    recorder.cost_limit = 600 * per_doc - 1
    with pytest.raises(OperationFailure) as err:
        db.big.find_one({"k": 3})
    assert err.value.code == 13 and "cost" in str(err.value) and err.value.details["reason"] == "cost"
    assert _last("find")["rejection"] == Reason.COST
    recorder.cost_limit = None
    assert db.big.count_documents({}) == 600


def test_cost_fallback_rules_without_explain(layered, recorder, monkeypatch):
    backend = layered.context.backends["mongo"]

    async def no_explain(*_a, **_k):
        return None

    monkeypatch.setattr(backend.costs, "_explain_scans", no_explain)
    db = layered.client(layered.tenants["a"]).main
    db.r.insert_many([{"_id": i} for i in range(300)])
    recorder.cost_limit = 1e9
    db.r.find_one({"_id": 5})
    list(db.r.find({}))
    per_doc = backend.options.cost_per_document
    assert [c for _, c in recorder.costs[-2:]] == [pytest.approx(per_doc), pytest.approx(300 * per_doc)]


def test_pymongo_retry_after_reconnect_is_a_new_session(layered):
    """A refused connection still passes the log phase (disconnect) and pymongo recovers."""
    bad = pymongo.MongoClient(layered.url(layered.tenants["a"], "nope"), serverSelectionTimeoutMS=3000)
    try:
        with pytest.raises(OperationFailure):
            bad.main.command("ping")
    finally:
        bad.close()
    good = layered.client(layered.tenants["a"])
    assert good.main.command("ping")["ok"] == 1.0


def test_gatekeeper_connection_cap_speaks_mongodb(make_gateway):
    """The real gatekeeper layer: the free tier's 5 connections, the 6th refused with 13."""
    gw = make_gateway(layers='[[layers]]\ntype = "gatekeeper"\nqueue = "0s"\n')
    slug = gw.tenants["a"]
    holders = [gw.client(slug, maxPoolSize=1) for _ in range(5)]
    for h in holders:
        assert h.main.command("ping")["ok"] == 1.0
    sixth = gw.client(slug, maxPoolSize=1)
    with pytest.raises(OperationFailure) as err:
        sixth.main.command("ping")
    assert err.value.code == 13 and err.value.details["reason"] == "connections"
    holders[0].close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert sixth.main.command("ping")["ok"] == 1.0
            break
        except OperationFailure:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
