"""The backend outside the front door: contract suite, provisioning, names, storage."""

from __future__ import annotations

import bson
import pymongo
import pytest
from mongo_support import PASSWORD, drop_upstream
from ogelkit_mongodb import MongoBackend, bsonraw, commands, wire
from ogelkit_mongodb.backend import MARKER
from ogelkit_mongodb.options import MongoOptions

from ogelkit import DatabaseRecord
from ogelkit.testing import services, test_context
from ogelkit.testing.contracts import BackendContract


class TestMongoBackendContract(BackendContract):
    backend_class = MongoBackend
    options = {"url": services.ferretdb_url(), "pool_size": 4}


def _backend(ctx, **options) -> MongoBackend:
    return MongoBackend(MongoOptions(url=services.ferretdb_url(), **options), name="mongo",
                        context=ctx)


@pytest.mark.anyio
async def test_provision_creates_marker_storage_and_deprovision_drops(suffix):
    async with test_context() as ctx:
        backend = _backend(ctx)
        await backend.open()
        try:
            tenant = await ctx.store.create_tenant(f"p-{suffix}", "free")
            upstream = await backend.provision(tenant, "main", ctx.tiers["free"])
            assert upstream == {"database": f"t_p-{suffix}__main"}
            assert await backend.provision(tenant, "main", ctx.tiers["free"]) == upstream
            with pymongo.MongoClient(services.ferretdb_url()) as direct:
                assert MARKER in direct[upstream["database"]].list_collection_names()
                direct[upstream["database"]].data.insert_many([{"x": "y" * 1000} for _ in range(50)])
            record = DatabaseRecord(tenant.slug, "main", "mongodb", "mongo", upstream)
            assert (await backend.storage_bytes(record) or 0) > 50_000
            await backend.check()
            await backend.deprovision(tenant, record)
            with pymongo.MongoClient(services.ferretdb_url()) as direct:
                assert upstream["database"] not in direct.list_database_names()
        finally:
            await backend.close()
            drop_upstream(services.ferretdb_url(), suffix)


@pytest.mark.anyio
async def test_upstream_names_and_connection_string(suffix):
    async with test_context() as ctx:
        backend = _backend(ctx, database_format="o7s_{tenant}_{db}")
        assert backend.upstream_name("acme", "main") == "o7s_acme_main"
        long = backend.upstream_name("a" * 60, "b" * 40)
        assert long.startswith("t_") and len(long) <= 63
        assert backend.upstream_name("acme", "a.b") != backend.upstream_name("acme", "a_b")
        tenant = await ctx.store.create_tenant(f"cs-{suffix}", "free")
        db = DatabaseRecord(tenant.slug, "main", "mongodb", "mongo", {"database": "x"})
        dsn = backend.connection_string(tenant, db, PASSWORD, "gw.example", 27017)
        parsed = pymongo.uri_parser.parse_uri(dsn)
        assert parsed["username"] == tenant.slug and parsed["password"] == PASSWORD
        assert parsed["options"]["authSource"] == "main"


def test_database_format_must_name_tenant_and_db():
    with pytest.raises(ValueError):
        MongoOptions(url="mongodb://x/", database_format="{tenant}_only")


def test_connection_string_works_with_pymongo(make_gateway):
    gw = make_gateway()
    backend = gw.context.backends["mongo"]
    slug = gw.tenants["a"]
    record = DatabaseRecord(slug, "main", "mongodb", "mongo", {"database": "unused"})
    from ogelkit import TenantRecord
    dsn = backend.connection_string(TenantRecord(slug, "free"), record, PASSWORD, "127.0.0.1", gw.port)
    with pymongo.MongoClient(dsn, serverSelectionTimeoutMS=5000) as client:
        assert client.get_default_database().name == "main"
        client.get_default_database().c.insert_one({"via": "dsn"})
        assert client.main.c.count_documents({"via": "dsn"}) == 1


# -- codec units ----------------------------------------------------------------------------

def test_splice_rewrites_nested_values_and_lengths():
    doc = bson.encode({"cursor": {"firstBatch": [{"a": 1}, {"b": "x" * 300}], "id": bson.Int64(5),
                                  "ns": "t_acme__main.c"}, "ok": 1.0})
    top = bsonraw.index(doc)
    cstart = top["cursor"][2]
    cur = bsonraw.index(doc, cstart)
    assert bsonraw.count(doc, cur["firstBatch"][2]) == 2
    ns = cur["ns"]
    parts, size = bsonraw.splice(doc, 0, len(doc), [(ns[2], ns[3], b"\x07\x00\x00\x00main.c\x00")],
                                 containers=(cstart,))
    out = b"".join(bytes(p) for p in parts)
    assert len(out) == size
    assert bson.decode(out) == {"cursor": {"firstBatch": [{"a": 1}, {"b": "x" * 300}], "id": 5,
                                           "ns": "main.c"}, "ok": 1.0}
    # Appending an element before the terminating NUL.
    parts, size = bsonraw.splice(doc, 0, len(doc), [(len(doc) - 1, len(doc) - 1,
                                                     bsonraw.int64_element("maxTimeMS", 10))])
    assert bson.decode(b"".join(bytes(p) for p in parts))["maxTimeMS"] == 10


def test_bson_walker_rejects_garbage():
    for junk in (b"\x05\x00\x00", b"\x06\x00\x00\x00\x00\x00",
                 b"\x0c\x00\x00\x00\x02a\x00\xff\x00\x00\x00\x00"):
        with pytest.raises(bsonraw.BsonError):
            bsonraw.index(junk)


def test_op_msg_with_document_sequence():
    body = bson.encode({"insert": "c", "$db": "main"})
    docs = bson.encode({"_id": 1}) + bson.encode({"_id": 2})
    seq = b"documents\x00" + docs
    section = b"\x01" + bsonraw._I32.pack(4 + len(seq)) + seq
    msg = wire.op_msg(1, 0, body)[:-len(body)] + body + section
    msg = bsonraw._I32.pack(len(msg)) + msg[4:]
    m = wire.parse_op_msg(msg)
    assert [ident for ident, *_ in m.sequences] == ["documents"]
    assert [bson.decode(d) for d in m.sequence_documents("documents")] == [{"_id": 1}, {"_id": 2}]


def test_pipeline_mapping():
    def map_db(name: str) -> str:
        if name not in ("main", "other"):
            raise commands.Refusal((13, "Unauthorized"), f"{name} is not yours")
        return f"t_x__{name}"

    stages = [{"$lookup": {"from": {"db": "other", "coll": "c"}, "as": "j", "pipeline": [
        {"$unionWith": {"coll": "u", "pipeline": [{"$out": {"db": "main", "coll": "o"}}]}}]}},
        {"$facet": {"f": [{"$merge": {"into": {"db": "other", "coll": "m"}}}]}},
        {"$out": "same_db"}]
    assert commands.map_pipeline(stages, map_db)
    assert stages[0]["$lookup"]["from"]["db"] == "t_x__other"
    assert stages[0]["$lookup"]["pipeline"][0]["$unionWith"]["pipeline"][0]["$out"]["db"] == "t_x__main"
    assert stages[1]["$facet"]["f"][0]["$merge"]["into"]["db"] == "t_x__other"
    assert not commands.map_pipeline([{"$match": {}}, {"$out": "x"}], map_db)
    with pytest.raises(commands.Refusal):
        commands.map_pipeline([{"$out": {"db": "admin", "coll": "x"}}], map_db)
    with pytest.raises(commands.Refusal):
        commands.map_pipeline([{"$currentOp": {}}], map_db)
