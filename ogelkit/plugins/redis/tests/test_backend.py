"""The backend: contract suite, ACL defence in depth, deprovisioning, quotas, cost classes,
the command table, and the RESP codec."""

from __future__ import annotations

import secrets
import time

import pytest
import redis
from ogelkit_redis import wire
from ogelkit_redis.backend import RedisBackend
from ogelkit_redis.connection import RedisOperation
from ogelkit_redis.options import RedisOptions
from redis_support import REDIS_HOST, REDIS_PORT, REDIS_URL, admin, gateway, new_tenants

from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.control.records import DatabaseRecord
from ogelkit.testing import make_session, test_context
from ogelkit.testing.contracts import BackendContract

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestRedisBackendContract(BackendContract):
    backend_class = RedisBackend
    options = {"url": REDIS_URL, "upstream_connections": 2, "max_bulk_size": "64MB",
               "prefix_format": "tc:{tenant}:{db}:" + secrets.token_hex(2) + ":"}


def _options(**kw) -> RedisOptions:
    errors = ErrorCollector("test")
    opts = structure(RedisOptions, {"url": REDIS_URL, **kw}, "x", errors)
    assert not errors.errors, errors.errors
    return opts


def test_options_validation():
    errors = ErrorCollector("test")
    structure(RedisOptions, {"prefix_format": "no-placeholders"}, "x", errors)
    assert any("prefix_format" in str(e) for e in errors.errors)


async def test_acl_user_confines_a_tenant_even_without_the_gateway():
    async with test_context() as ctx:
        backend = RedisBackend(_options(), name="r", context=ctx)
        await backend.open()
        sfx = secrets.token_hex(3)
        ta = await ctx.store.create_tenant(f"acla{sfx}", "free")
        tb = await ctx.store.create_tenant(f"aclb{sfx}", "free")
        try:
            ua = await backend.provision(ta, "main", ctx.tiers["free"])
            ub = await backend.provision(tb, "main", ctx.tiers["free"])
            assert ua == await backend.provision(ta, "main", ctx.tiers["free"])  # idempotent
            direct = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, username=ua["user"],
                                 password=ua["password"])
            assert direct.set(ua["prefix"] + "mine", 1)
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, username=ub["user"],
                        password=ub["password"]).set(ub["prefix"] + "theirs", 1)
            for cmd in (["GET", ub["prefix"] + "theirs"], ["GET", "unprefixed"],
                        ["KEYS", "*"], ["SCAN", "0"], ["FLUSHALL"], ["FLUSHDB"],
                        ["CONFIG", "GET", "maxmemory"], ["PUBLISH", "other", "x"],
                        ["RANDOMKEY"], ["DBSIZE"], ["PUBSUB", "CHANNELS"],
                        ["SCRIPT", "FLUSH"], ["EVAL", "return redis.call('KEYS', '*')", "0"]):
                with pytest.raises(redis.exceptions.ResponseError):
                    direct.execute_command(*cmd)
            assert direct.publish(ua["prefix"] + "chan", "x") == 0
            # deprovision drops the user and every key of the prefix (SCAN + UNLINK)
            for i in range(1200):
                direct.set(f"{ua['prefix']}bulk{i}", i)
            db = DatabaseRecord(ta.slug, "main", "redis", "r", ua)
            await backend.deprovision(ta, db)
            await backend.deprovision(ta, db)
            r = admin()
            assert not list(r.scan_iter(match=ua["prefix"] + "*", count=1000))
            assert ua["user"].encode() not in r.acl_users() and ua["user"] not in r.acl_users()
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(host=REDIS_HOST, port=REDIS_PORT, username=ua["user"],
                            password=ua["password"]).ping()
            await backend.deprovision(tb, DatabaseRecord(tb.slug, "main", "redis", "r", ub))
        finally:
            await backend.close()


async def test_command_table_and_key_specs():
    async with test_context() as ctx:
        backend = RedisBackend(_options(), name="r", context=ctx)
        await backend.open()
        try:
            t = backend.table
            assert len(t) > 200 and backend.version.startswith("7")

            def keys(*argv: str) -> list[str]:
                a = [x.encode() for x in argv]
                cmd = t.lookup(a[0])
                if cmd.subcommands:
                    cmd = cmd.subcommands[a[1].lower()]
                return [argv[i] for i in cmd.key_positions(a)]
            assert keys("GET", "k") == ["k"]
            assert keys("MSET", "a", "1", "b", "2") == ["a", "b"]
            assert keys("ZUNIONSTORE", "d", "2", "x", "y", "WEIGHTS", "1", "2") == ["d", "x", "y"]
            assert keys("EVAL", "s", "2", "k1", "k2", "arg") == ["k1", "k2"]
            assert keys("XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0") == ["s1", "s2"]
            assert keys("GEORADIUS", "g", "0", "0", "1", "km", "STORE", "dst") == ["g", "dst"]
            assert keys("OBJECT", "ENCODING", "k") == ["k"]
            assert keys("MEMORY", "USAGE", "k") == ["k"]
            assert keys("BLMPOP", "0", "2", "a", "b", "LEFT") == ["a", "b"]
            assert t.lookup(b"flushall").kind == "refuse"
            assert t.lookup(b"MIGRATE").kind == "refuse"
            assert t.lookup(b"keys").kind == "emulate" and t.lookup(b"scan").kind == "pattern"
            assert t.lookup(b"nope") is None
        finally:
            await backend.close()


async def test_cost_classes():
    async with test_context() as ctx:
        backend = RedisBackend(_options(), name="r", context=ctx)
        await backend.open()
        prefix = f"cost:{secrets.token_hex(3)}:"
        r = admin()
        try:
            r.sadd(prefix + "s", *range(500))
            r.rpush(prefix + "l", *range(300))
            session = make_session(ctx, protocol="redis")

            def op(*argv: str) -> RedisOperation:
                a = [x.encode() for x in argv]
                o = RedisOperation(session, "command", argv[0].upper())
                o.argv = a
                o.command = backend.table.lookup(a[0])
                return o
            assert backend.cost_key(op("GET", prefix + "s")) is None
            assert backend.cost_key(op("LRANGE", prefix + "l", "0", "9")) is None
            assert await backend.estimate_cost(op("SMEMBERS", prefix + "s")) == 500
            assert await backend.estimate_cost(op("LRANGE", prefix + "l", "0", "-1")) == 300
            assert await backend.estimate_cost(op("LRANGE", prefix + "l", "0", "199")) == 200
            assert await backend.estimate_cost(op("SORT", prefix + "l")) > 300
            assert await backend.estimate_cost(op("KEYS", "*")) >= 2
        finally:
            r.delete(prefix + "s", prefix + "l")
            await backend.close()


def test_writes_over_the_key_quota_get_oom():
    tenants = new_tenants(1)
    tiers = '[tiers.tiny]\nbase = "free"\nrank = 9\nmax_keys = 5\n'
    with gateway(tenants, tier="tiny", backend='quota_sample_interval = "0.2s"',
                 extra=tiers) as gw:
        c = gw.client(gw.a)
        for i in range(5):
            c.set(f"k{i}", i)
        deadline = time.monotonic() + 5
        err = None
        while time.monotonic() < deadline:
            try:
                c.set("more", 1)
                c.delete("more")
            except redis.ResponseError as exc:
                err = exc
                break
            time.sleep(0.1)
        assert isinstance(err, redis.exceptions.OutOfMemoryError)  # the -OOM error code
        assert "5 keys of 5 on tier tiny" in str(err)
        assert "quota" in str(err)
        assert c.get("k1") == b"1"  # reads still work
        c.delete("k0", "k1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert c.set("again", 1)
                break
            except redis.ResponseError:
                time.sleep(0.1)
        else:
            pytest.fail("writes did not resume under the quota")
        backend = gw.running.context.backends["r"]
        tdb = backend.tdbs[(gw.a.slug, "main")]
        assert tdb.memory and tdb.memory > 0


def test_resp_codec():
    state = wire.Partial()
    argv, end = wire.parse_command(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1", 0, 100, 16, state)
    assert argv == [b"GET", b"k"] and end == 20
    partial = b"*2\r\n$3\r\nGET\r\n$10\r\nab"
    argv, resume = wire.parse_command(partial, 0, 100, 16, state)
    # GET is read; the rest is kept from the value's header and waits for the whole value
    assert argv is None and resume == 13 and state.argv == [b"GET"] and state.left == 1
    assert state.need == len(b"$10\r\n") + 12
    argv, end = wire.parse_command(b"$10\r\nabcdefghij\r\n+", 0, 100, 16, state)
    assert argv == [b"GET", b"abcdefghij"] and end == 17 and state.argv is None
    assert wire.split_args(b'SET "a b\\x41" \'c\\\'d\'') == [b"SET", b"a bA", b"c'd"]
    with pytest.raises(wire.ProtocolError):
        wire.split_args(b'SET "open')
    with pytest.raises(wire.ProtocolError, match="invalid bulk length"):
        wire.parse_command(b"*1\r\n$101\r\n", 0, 100, 16, wire.Partial())
    for raw in (b"+OK\r\n", b"$-1\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"%1\r\n+a\r\n_\r\n",
                b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", b",1.5\r\n", b"#t\r\n",
                b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", b"=8\r\ntxt:abcd\r\n"):
        assert wire.reply_end(raw + b"+next", 0) == len(raw)
        assert wire.reply_end(raw[:-1], 0) < 0
        assert wire.encode(wire.decode(raw)[0]) == raw


def test_writes_over_the_memory_quota_get_oom():
    tenants = new_tenants(1)
    tiers = '[tiers.small]\nbase = "free"\nrank = 9\nmemory = "64kB"\n'
    with gateway(tenants, tier="small", backend='quota_sample_interval = "0.2s"',
                 extra=tiers) as gw:
        c = gw.client(gw.a)
        c.set("blob", b"x" * 100_000)
        deadline = time.monotonic() + 5
        err = None
        while time.monotonic() < deadline:
            try:
                c.set("more", 1)
            except redis.exceptions.OutOfMemoryError as exc:
                err = exc
                break
            time.sleep(0.1)
        assert err is not None and "memory quota" in str(err) and "of 64kB on tier small" in str(err)
        assert c.delete("blob") == 1  # deleting is always allowed
        backend = gw.running.context.backends["r"]
        tdb = backend.tdbs[(gw.a.slug, "main")]
        assert tdb.memory is not None
