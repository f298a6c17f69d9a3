"""pymongo (sync) through the gateway: CRUD, bulk, indexes, aggregation, cursors, big documents,
namespacing and tenant isolation. Every test runs against each available upstream."""

from __future__ import annotations

import time

import pymongo
import pytest
from bson import ObjectId
from mongo_support import upstream_client
from pymongo import DeleteMany, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure


def test_crud(make_gateway):
    gw = make_gateway()
    db = gw.client(gw.tenants["a"]).main
    res = db.people.insert_one({"name": "ada", "age": 36})
    assert isinstance(res.inserted_id, ObjectId)
    assert db.people.insert_many([{"name": n, "age": i} for i, n in enumerate("bcdef")]).acknowledged
    assert db.people.find_one({"name": "ada"})["age"] == 36
    assert db.people.count_documents({}) == 6
    assert sorted(d["name"] for d in db.people.find({"age": {"$lt": 3}})) == ["b", "c", "d"]
    upd = db.people.update_many({"age": {"$lt": 3}}, {"$set": {"young": True}})
    assert (upd.matched_count, upd.modified_count) == (3, 3)
    upsert = db.people.update_one({"name": "zed"}, {"$set": {"age": 99}}, upsert=True)
    assert upsert.upserted_id is not None
    assert db.people.replace_one({"name": "zed"}, {"name": "zed", "age": 100}).modified_count == 1
    found = db.people.find_one_and_update({"name": "ada"}, {"$inc": {"age": 1}},
                                          return_document=pymongo.ReturnDocument.AFTER)
    assert found["age"] == 37
    assert db.people.distinct("young") == [True]
    assert db.people.delete_one({"name": "zed"}).deleted_count == 1
    assert db.people.delete_many({"young": True}).deleted_count == 3
    assert db.people.count_documents({}) == 3
    # The data really lives in the tenant's upstream database.
    with upstream_client(gw.upstream) as direct:
        assert direct[gw.upstream_db(gw.tenants["a"])].people.count_documents({}) == 3


def test_bulk_writes_and_duplicate_key_error_uses_tenant_names(make_gateway):
    gw = make_gateway()
    coll = gw.client(gw.tenants["a"]).main.items
    result = coll.bulk_write([InsertOne({"_id": i, "v": i}) for i in range(500)] + [
        UpdateOne({"_id": 1}, {"$set": {"v": -1}}),
        ReplaceOne({"_id": 2}, {"v": -2}),
        DeleteMany({"_id": {"$gte": 400}}),
    ])
    assert (result.inserted_count, result.modified_count, result.deleted_count) == (500, 2, 100)
    assert coll.count_documents({}) == 400
    with pytest.raises(DuplicateKeyError) as err:
        coll.insert_one({"_id": 3})
    assert gw.upstream_db(gw.tenants["a"]) not in str(err.value.details)
    with pytest.raises(BulkWriteError) as bulk:
        coll.insert_many([{"_id": 1000}, {"_id": 5}, {"_id": 1001}], ordered=False)
    assert bulk.value.details["nInserted"] == 2
    assert all(gw.upstream_db(gw.tenants["a"]) not in e["errmsg"]
               for e in bulk.value.details["writeErrors"])


def test_indexes(make_gateway):
    gw = make_gateway()
    coll = gw.client(gw.tenants["a"]).main.idx
    coll.insert_many([{"k": i, "u": f"user{i}"} for i in range(50)])
    assert coll.create_index([("k", 1)]) == "k_1"
    assert coll.create_index("u", unique=True) == "u_1"
    names = {ix["name"] for ix in coll.list_indexes()}
    assert {"_id_", "k_1", "u_1"} <= names
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"u": "user7"})
    coll.drop_index("k_1")
    assert "k_1" not in coll.index_information()


def test_aggregation(make_gateway):
    gw = make_gateway()
    coll = gw.client(gw.tenants["a"]).main.sales
    coll.insert_many([{"shop": s, "amount": a} for s in ("x", "y") for a in range(1, 11)])
    out = list(coll.aggregate([{"$match": {"amount": {"$gt": 5}}},
                               {"$group": {"_id": "$shop", "total": {"$sum": "$amount"}}},
                               {"$sort": {"_id": 1}}]))
    assert out == [{"_id": "x", "total": 40}, {"_id": "y", "total": 40}]
    cursor = coll.aggregate([{"$sort": {"amount": 1}}], batchSize=3)
    assert len(list(cursor)) == 20


def test_cursor_of_10000_documents(make_gateway):
    gw = make_gateway()
    coll = gw.client(gw.tenants["a"]).main.many
    coll.insert_many([{"i": i, "pad": "x" * 40} for i in range(10_000)])
    seen = [d["i"] for d in coll.find({}, {"i": 1}).sort("i", 1).batch_size(1000)]
    assert seen == list(range(10_000))
    # The default batching too (101 first, then getMore up to 16 MB).
    assert sum(1 for _ in coll.find()) == 10_000
    backend = gw.context.backends["mongo"]
    assert len(backend.cursors) == 0  # exhausted cursors are forgotten


def test_document_near_16mb(make_gateway):
    gw = make_gateway()
    coll = gw.client(gw.tenants["a"]).main.big
    blob = "z" * (16 * 1024 * 1024 - 200)
    coll.insert_one({"_id": 1, "blob": blob})
    doc = coll.find_one({"_id": 1})
    assert len(doc["blob"]) == len(blob)
    with pytest.raises((pymongo.errors.DocumentTooLarge, OperationFailure)):
        coll.insert_one({"_id": 2, "blob": blob + "z" * 1024 * 1024})


def test_two_tenants_with_identical_names_are_isolated(make_gateway):
    gw = make_gateway({"a": {}, "b": {}})
    a = gw.client(gw.tenants["a"]).main.shared
    b = gw.client(gw.tenants["b"]).main.shared
    a.insert_many([{"who": "a", "i": i} for i in range(5)])
    b.insert_one({"who": "b"})
    assert a.count_documents({}) == 5 and b.count_documents({}) == 1
    assert {d["who"] for d in b.find()} == {"b"}
    a.drop()
    assert b.count_documents({}) == 1
    assert gw.client(gw.tenants["b"]).list_database_names() == ["main"]


def test_cursor_of_another_tenant_is_not_found(make_gateway):
    gw = make_gateway({"a": {}, "b": {}})
    ca, cb = gw.client(gw.tenants["a"]), gw.client(gw.tenants["b"])
    ca.main.c.insert_many([{"i": i} for i in range(50)])
    cb.main.c.insert_many([{"i": i} for i in range(50)])
    first = ca.main.command("find", "c", batchSize=5)
    cursor_id = first["cursor"]["id"]
    assert cursor_id and first["cursor"]["ns"] == "main.c"
    with pytest.raises(OperationFailure) as err:
        cb.main.command("getMore", cursor_id, collection="c")
    assert err.value.code == 43
    killed = cb.main.command("killCursors", "c", cursors=[cursor_id])
    assert killed["cursorsNotFound"] == [cursor_id] and killed["cursorsKilled"] == []
    # Still alive for its owner.
    more = ca.main.command("getMore", cursor_id, collection="c", batchSize=10)
    assert len(more["cursor"]["nextBatch"]) == 10 and more["cursor"]["ns"] == "main.c"
    done = ca.main.command("killCursors", "c", cursors=[cursor_id])
    assert done["cursorsKilled"] == [cursor_id]


def test_namespaces_in_replies_and_listings(make_gateway):
    gw = make_gateway({"a": {"databases": ["main", "other"]}})
    client = gw.client(gw.tenants["a"])
    client.main.c.insert_one({"x": 1})
    assert client.main.list_collection_names() == ["c"]  # the marker collection is hidden
    assert sorted(client.list_database_names()) == ["main", "other"]
    listing = client.admin.command("listDatabases")
    assert sorted(d["name"] for d in listing["databases"]) == ["main", "other"]
    assert client.admin.command("listDatabases", filter={"name": "other"},
                                nameOnly=True)["databases"] == [{"name": "other"}]
    stats = client.main.command("dbStats")
    assert stats["db"] == "main"
    assert client.main.command("collStats", "c")["ns"] == "main.c"
    client.admin.command("renameCollection", "main.c", to="main.d")
    assert client.main.d.find_one()["x"] == 1
    assert client.main.list_collection_names() == ["d"]
    try:  # across the tenant's databases: mapped both ways (FerretDB 1.x: not implemented)
        client.admin.command("renameCollection", "main.d", to="other.e")
    except OperationFailure as err:
        assert err.code == 238, err.details
    else:
        assert client.other.e.find_one()["x"] == 1
    with pytest.raises(OperationFailure) as err:
        client.admin.command("renameCollection", "main.d", to="elsewhere.e")
    assert err.value.code == 13


def test_databases_not_provisioned_are_refused(make_gateway):
    gw = make_gateway()
    client = gw.client(gw.tenants["a"])
    with pytest.raises(OperationFailure) as err:
        client.nope.c.insert_one({"x": 1})
    assert err.value.code == 13
    assert "not one of your databases" in str(err.value) and "ogelkit databases create" in str(err.value)
    for db in ("admin", "config", "local"):
        with pytest.raises(OperationFailure) as err:
            client[db].c.find_one()
        assert err.value.code == 13


@pytest.mark.parametrize("command", [
    {"shutdown": 1}, {"replSetGetStatus": 1}, {"setParameter": 1, "logLevel": 1}, {"fsync": 1},
    {"currentOp": 1}, {"killOp": 1, "op": 1}, {"createUser": "x", "pwd": "y", "roles": []},
    {"serverStatus": 1}, {"getCmdLineOpts": 1}, {"hostInfo": 1}, {"killAllSessions": []},
])
def test_server_level_commands_are_refused(make_gateway, command):
    gw = make_gateway()
    client = gw.client(gw.tenants["a"])
    for db in ("admin", "main"):
        with pytest.raises(OperationFailure) as err:
            client[db].command(command)
        assert err.value.code == 13, err.value.details
        assert "server-level" in err.value.details["errmsg"]


def test_unknown_commands_and_server_wide_stages_are_refused(make_gateway):
    gw = make_gateway()
    db = gw.client(gw.tenants["a"]).main
    with pytest.raises(OperationFailure) as err:
        db.command({"surelyNotACommand": 1})
    assert err.value.code == 59
    for stage in ({"$currentOp": {}}, {"$listSessions": {}}):
        with pytest.raises(OperationFailure) as err:
            db.command("aggregate", 1, pipeline=[stage], cursor={})
        assert err.value.code == 13


def test_stages_naming_other_databases_are_mapped_or_refused(make_gateway):
    gw = make_gateway({"a": {"databases": ["main", "other"]}, "b": {}})
    db = gw.client(gw.tenants["a"]).main
    db.src.insert_many([{"k": i} for i in range(5)])
    # A database that is not the tenant's: refused by the gateway (never reaches the upstream).
    for pipeline in ([{"$out": {"db": "elsewhere", "coll": "x"}}],
                     [{"$merge": {"into": {"db": "elsewhere", "coll": "x"}}}],
                     [{"$lookup": {"from": {"db": "elsewhere", "coll": "x"}, "as": "j",
                                   "pipeline": []}}],
                     [{"$facet": {"f": [{"$lookup": {"from": {"db": "nope", "coll": "x"},
                                                     "as": "j", "pipeline": []}}]}}],
                     [{"$unionWith": {"coll": "x", "pipeline": [
                         {"$out": {"db": gw.upstream_db(gw.tenants["b"]), "coll": "x"}}]}}]):
        with pytest.raises(OperationFailure) as err:
            list(db.src.aggregate(pipeline))
        assert err.value.code == 13 and "not one of your databases" in str(err.value)
    # The tenant's own database: mapped to its upstream name, so it works where the upstream
    # implements the stage (MongoDB) and FerretDB 1.x answers "not implemented" (238).
    try:
        list(db.src.aggregate([{"$out": {"db": "other", "coll": "copy"}}]))
    except OperationFailure as err:
        assert err.code == 238, err.details
    else:
        assert gw.client(gw.tenants["a"]).other.copy.count_documents({}) == 5


def test_unacknowledged_writes_and_sessions(make_gateway):
    gw = make_gateway()
    client = gw.client(gw.tenants["a"])
    fire = client.main.get_collection("w", write_concern=pymongo.WriteConcern(w=0))
    for i in range(20):
        fire.insert_one({"i": i})
    assert client.main.w.count_documents({}) == 20  # same connection: ordered after the w:0s
    with client.start_session() as session:
        assert client.main.w.find_one({"i": 3}, session=session)["i"] == 3
    assert client.main.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"] \
        == gw.tenants["a"]


def test_speculative_and_explicit_authentication(make_gateway):
    gw = make_gateway()
    slug = gw.tenants["a"]
    for params in ({}, {"authMechanism": "SCRAM-SHA-256"}, {"authSource": "main"}):
        client = pymongo.MongoClient(gw.url(slug, **params), serverSelectionTimeoutMS=5000)
        try:
            assert client.main.command("ping")["ok"] == 1.0
            client.main.c.insert_one({"p": str(params)})
        finally:
            client.close()
    # Closed clients leave the registry once the gateway has seen their sockets close.
    sessions = gw.context.sessions
    deadline = time.monotonic() + 5
    while sessions.count(slug) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sessions.count(slug) == 0


def test_database_provisioned_while_connected_becomes_usable(make_gateway):
    import asyncio

    from ogelkit import DatabaseRecord
    gw = make_gateway()
    slug = gw.tenants["a"]
    client = gw.client(slug)
    client.main.c.insert_one({"x": 1})
    with pytest.raises(OperationFailure) as err:
        client.late.c.insert_one({"x": 1})
    assert err.value.code == 13

    async def provision() -> None:
        ctx = gw.context
        tenant = await ctx.store.get_tenant(slug)
        upstream = await ctx.backends["mongo"].provision(tenant, "late", ctx.tiers["free"])
        await ctx.store.put_database(DatabaseRecord(slug, "late", "mongodb", "mongo", upstream))
        ctx.directory.invalidate(slug)

    loop = gw.running.loop
    asyncio.run_coroutine_threadsafe(provision(), loop).result(10)
    import time
    time.sleep(1.1)  # a client looks its tenant up again at most once a second
    client.late.c.insert_one({"x": 2})
    assert client.late.c.find_one()["x"] == 2
    assert sorted(client.list_database_names()) == ["late", "main"]
