"""Differential property test: two tenants that use the *same* key and channel names through
the gateway must see exactly what two dedicated Redis databases (14 and 15 of the test
server, reserved for this plugin and flushed here) answer to the same commands."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import REDIS_HOST, REDIS_PORT, Gw

KEYS = ["k1", "k2", "k3", "{k}1"]
VALS = ["a", "1", "22", "xyz"]
key = st.sampled_from(KEYS)
val = st.sampled_from(VALS)
num = st.integers(min_value=-3, max_value=3)

# Replies whose order is not defined by Redis are compared sorted.
UNORDERED = {"KEYS", "SMEMBERS", "SCANALL", "SUNION", "SINTER", "HKEYS", "HVALS"}

command = st.one_of(
    st.tuples(st.just("SET"), key, val),
    st.tuples(st.just("GET"), key),
    st.tuples(st.just("DEL"), key, key),
    st.tuples(st.just("INCR"), key),
    st.tuples(st.just("APPEND"), key, val),
    st.tuples(st.just("EXISTS"), key, key),
    st.tuples(st.just("TYPE"), key),
    st.tuples(st.just("RPUSH"), key, val, val),
    st.tuples(st.just("LPOP"), key),
    st.tuples(st.just("LRANGE"), key, num, num),
    st.tuples(st.just("LMOVE"), key, key, st.sampled_from(["LEFT", "RIGHT"]),
              st.sampled_from(["LEFT", "RIGHT"])),
    st.tuples(st.just("SADD"), key, val, val),
    st.tuples(st.just("SMEMBERS"), key),
    st.tuples(st.just("SINTERSTORE"), key, key, key),
    st.tuples(st.just("SUNION"), key, key),
    st.tuples(st.just("HSET"), key, val, val),
    st.tuples(st.just("HGETALL"), key),
    st.tuples(st.just("HKEYS"), key),
    st.tuples(st.just("ZADD"), key, num, val),
    st.tuples(st.just("ZRANGE"), key, st.just("0"), st.just("-1"), st.just("WITHSCORES")),
    st.tuples(st.just("ZUNIONSTORE"), key, st.just("2"), key, key),
    st.tuples(st.just("RENAME"), key, key),
    st.tuples(st.just("RENAMENX"), key, key),
    st.tuples(st.just("COPY"), key, key, st.just("REPLACE")),
    st.tuples(st.just("MSET"), key, val, key, val),
    st.tuples(st.just("MGET"), key, key, key),
    st.tuples(st.just("GETDEL"), key),
    st.tuples(st.just("EXPIRE"), key, st.just("1000")),
    st.tuples(st.just("PERSIST"), key),
    st.tuples(st.just("KEYS"), st.sampled_from(["*", "k*", "k[12]", "\\{k\\}*"])),
    st.tuples(st.just("SCANALL"), st.sampled_from(["*", "k?"])),
    st.tuples(st.just("DBSIZE")),
    st.tuples(st.just("SORT"), key, st.just("ALPHA")),
    st.tuples(st.just("PUBLISH"), key, val),
    st.tuples(st.just("EVAL"), st.just("return redis.call('EXISTS', KEYS[1])"), st.just("1"), key),
    st.tuples(st.just("OBJECT"), st.just("ENCODING"), key),
    st.tuples(st.just("FLUSHDB")),
    st.tuples(st.just("RANDOMKEY")),
    st.tuples(st.just("BLPOP"), key, key, st.just("0.01")),
    st.tuples(st.just("WATCHED"), key, val),
)
# A transaction: a few commands between MULTI and EXEC, compared as EXEC's reply.
transaction = st.tuples(st.just("TX"), st.lists(command.filter(
    lambda c: c[0] not in ("KEYS", "SCANALL", "DBSIZE", "FLUSHDB", "RANDOMKEY", "WATCHED")),
    min_size=1, max_size=4))
# A pipeline (one write, replies read together): pass-through, transformed, held (PING,
# ECHO: answered by the gateway) and blocking replies must come back in order.
pipeline = st.tuples(st.just("PIPE"), st.lists(st.one_of(
    command.filter(lambda c: c[0] not in ("SCANALL", "RANDOMKEY", "WATCHED")),
    st.tuples(st.just("PING")), st.tuples(st.just("ECHO"), val)), min_size=2, max_size=12))
steps = st.lists(st.tuples(st.integers(0, 1), st.one_of(command, command, command, transaction,
                                                          pipeline)),
                 min_size=1, max_size=25)


def run(client: redis.Redis, cmd: tuple) -> object:
    name = cmd[0]
    try:
        if name == "TX":
            p = client.pipeline(transaction=True)
            for inner in cmd[1]:
                p.execute_command(*inner)
            out = p.execute(raise_on_error=False)
            return ("tx", [("err", str(x)) if isinstance(x, Exception) else
                           ("ok", sorted(x) if inner[0] in UNORDERED and isinstance(x, list) else x)
                           for x, inner in zip(out, cmd[1], strict=True)])
        if name == "PIPE":
            p = client.pipeline(transaction=False)
            for inner in cmd[1]:
                p.execute_command(*inner)
            out = p.execute(raise_on_error=False)
            return ("pipe", [("err", str(x)) if isinstance(x, Exception) else
                             ("ok", sorted(x) if inner[0] in UNORDERED and isinstance(x, list)
                              else x)
                             for x, inner in zip(out, cmd[1], strict=True)])
        if name == "RANDOMKEY":  # random, but from the tenant's own keys
            key_ = client.randomkey()
            return ("ok", key_ is None, key_ is None or key_ in client.keys("*"))
        if name == "WATCHED":  # WATCH + MULTI/EXEC on a dedicated connection, then back
            with client.pipeline() as p:
                p.watch(cmd[1])
                p.multi()
                p.set(cmd[1], cmd[2])
                p.get(cmd[1])
                return ("ok", p.execute())
        if name == "SCANALL":
            return ("ok", sorted(client.scan_iter(match=cmd[1], count=3)))
        reply = client.execute_command(*cmd)
    except redis.ResponseError as exc:
        return ("err", str(exc))
    if name in UNORDERED and isinstance(reply, list):
        reply = sorted(reply)
    if name == "TTL":
        reply = reply > 0
    return ("ok", reply)


def test_two_tenants_behave_like_two_dedicated_databases(gw: Gw):
    through = [gw.client(gw.a), gw.client(gw.b)]
    direct = [redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db) for db in (14, 15)]
    assert direct[0].connection_pool.connection_kwargs["db"] == 14

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(steps)
    def check(sequence):
        for c in through + direct:
            c.flushdb()
        for i, cmd in sequence:
            expected = run(direct[i], cmd)
            got = run(through[i], cmd)
            assert got == expected, (i, cmd)
        # and the other tenant's keyspace is exactly the other database's
        for i in (0, 1):
            assert sorted(through[i].keys("*")) == sorted(direct[i].keys("*"))

    try:
        check()
    finally:
        for c in direct:
            c.flushdb()
            c.close()
