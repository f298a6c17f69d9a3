"""End to end through the gateway with redis-py (sync, RESP2 and RESP3) and redis-cli."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis_support import Gw, admin, redis_cli

PROTOCOLS = [2, 3]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_same_key_names_are_isolated(gw: Gw, proto: int):
    a, b = gw.client(gw.a, protocol=proto), gw.client(gw.b, protocol=proto)
    a.flushdb()
    b.flushdb()
    assert a.set("k", "from-a") and b.set("k", "from-b")
    a.hset("h", mapping={"f": "1"})
    assert a.get("k") == b"from-a" and b.get("k") == b"from-b"
    assert b.hgetall("h") == {}
    assert sorted(a.keys("*")) == [b"h", b"k"] and b.keys("*") == [b"k"]
    assert a.dbsize() == 2 and b.dbsize() == 1
    # Upstream, the keys carry each tenant's prefix.
    raw = admin()
    assert raw.get(gw.a.prefix + "k") == b"from-a"
    assert raw.get("k") is None or raw.get("k") != b"from-a"


def test_multi_key_and_rename_commands(gw: Gw):
    a = gw.client(gw.a)
    a.flushdb()
    a.mset({"x": 1, "y": 2})
    assert a.mget("x", "y", "z") == [b"1", b"2", None]
    a.rename("x", "x2")
    assert a.exists("x") == 0 and a.get("x2") == b"1"
    a.zadd("z1", {"m": 1})
    a.zadd("z2", {"m": 2, "n": 3})
    assert a.zunionstore("zu", ["z1", "z2"]) == 2
    assert a.zrange("zu", 0, -1, withscores=True) == [(b"n", 3.0), (b"m", 3.0)] or \
        a.zrange("zu", 0, -1, withscores=True) == [(b"m", 3.0), (b"n", 3.0)]
    assert a.object("encoding", "zu") in (b"listpack", b"ziplist", b"skiplist")
    assert a.copy("x2", "x3") and a.get("x3") == b"1"
    assert a.lmpop(2, "nolist", "l2", direction="LEFT") is None
    a.rpush("l2", "v")
    assert a.lmpop(2, "nolist", "l2", direction="LEFT") == [b"l2", [b"v"]]
    assert gw.client(gw.b).exists("x2", "zu", "x3") == 0


def test_scan_keys_randomkey_and_patterns(gw: Gw):
    a, b = gw.client(gw.a), gw.client(gw.b)
    a.flushdb()
    b.flushdb()
    for i in range(30):
        a.set(f"user:{i}", i)
    b.set("user:x", 1)
    assert len(list(a.scan_iter(match="user:*", count=7))) == 30
    assert set(b.scan_iter()) == {b"user:x"}
    assert len(a.keys("user:1*")) == 11
    assert b.randomkey() == b"user:x"
    assert a.randomkey().startswith(b"user:")
    b.delete("user:x")
    assert b.randomkey() is None
    # glob characters in the tenant's own pattern still work
    a.set("br[a]ck", 1)
    assert a.keys("br\\[a\\]ck") == [b"br[a]ck"]


def test_eval_and_sort(gw: Gw):
    a = gw.client(gw.a)
    a.flushdb()
    assert a.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "ek", "v") == b"OK"
    assert a.get("ek") == b"v"
    sha = a.script_load("return redis.call('GET', KEYS[1])")
    assert a.evalsha(sha, 1, "ek") == b"v"
    # A key built inside the script is not prefixed: the ACL user may not touch it.
    with pytest.raises(redis.ResponseError, match=r"(?i)noperm|permission|can.t access"):
        a.eval("return redis.call('GET', 'not-declared')", 0)
    a.rpush("ids", 3, 1, 2)
    a.mset({"w_1": 30, "w_2": 10, "w_3": 20, "name_1": "one", "name_2": "two", "name_3": "three"})
    assert a.sort("ids") == [b"1", b"2", b"3"]
    assert a.sort("ids", by="w_*") == [b"2", b"3", b"1"]
    assert a.sort("ids", by="w_*", get=["#", "name_*"]) == [b"2", b"two", b"3", b"three", b"1",
                                                           b"one"]
    assert a.sort("ids", store="sorted") == 3 and a.lrange("sorted", 0, -1) == [b"1", b"2", b"3"]


def test_sort_get_hash_returns_the_elements_and_patterns_stay_in_the_tenant(gw: Gw):
    a, b = gw.client(gw.a), gw.client(gw.b)
    a.flushdb()
    b.flushdb()
    a.rpush("ids", 3, 1, 2)
    a.mset({"name_1": "one", "name_2": "two", "name_3": "three"})
    b.mset({"name_1": "B1", "name_2": "B2", "name_3": "B3", "secret": "s"})
    # GET # is the element itself: Redis refuses it to the tenant's ACL user all the same
    assert a.sort("ids", get="#") == [b"1", b"2", b"3"]
    assert a.execute_command("SORT_RO", "ids", "GET", "#", "DESC") == [b"3", b"2", b"1"]
    assert a.sort("ids", get="#", start=1, num=1) == [b"2"]
    assert a.sort("ids", get="#", store="copy") == 3 and a.lrange("copy", 0, -1) == [b"1", b"2",
                                                                                     b"3"]
    with a.pipeline(transaction=True) as p:  # stays on the tenant's connection: MULTI works
        p.sort("ids", get="#", desc=True)
        assert p.execute() == [[b"3", b"2", b"1"]]
    assert a.sort("ids", get=["#", "#"]) == [b"1", b"1", b"2", b"2", b"3", b"3"]
    assert a.sort("ids", get=["#", "name_*"]) == [b"1", b"one", b"2", b"two", b"3", b"three"]
    # patterns read this tenant's keys only, never the other tenant's of the same name
    assert a.sort("ids", get="name_*") == [b"one", b"two", b"three"]
    assert a.sort("ids", get="secret") == [None, None, None]
    assert a.sort("ids", by="nosort", get=["#", "name_*"]) == [b"3", b"three", b"1", b"one",
                                                               b"2", b"two"]
    b.rpush("ids", 1)
    assert b.sort("ids", get=["#", "name_*"]) == [b"1", b"B1"]


def test_refused_commands_say_why(gw: Gw):
    a = gw.client(gw.a)
    for cmd, expect in [
        (["FLUSHALL"], "FLUSHALL"), (["CONFIG", "GET", "*"], "shared Redis server"),
        (["DEBUG", "SLEEP", "0"], "not allowed"), (["SHUTDOWN"], "not allowed"),
        (["MONITOR"], "every tenant"), (["CLIENT", "PAUSE", "10"], "other tenants"),
        (["CLIENT", "UNBLOCK", "1"], "other tenants"),
        (["SCRIPT", "FLUSH"], "shared by every tenant"), (["ACL", "LIST"], "platform"),
        (["MODULE", "LIST"], "not allowed"), (["REPLICAOF", "NO", "ONE"], "not allowed"),
        (["SAVE"], "not allowed"), (["MIGRATE", "h", "1", "k", "0", "1"], "another server"),
        (["MOVE", "k", "1"], "single logical"), (["WAIT", "0", "0"], "replication"),
        (["SWAPDB", "0", "1"], "single logical"), (["PUBSUB", "NUMPAT"], "pattern"),
        (["COPY", "a", "b", "DB", "2"], "single logical"),
        (["FUNCTION", "FLUSH"], "shared by every tenant"),
        (["SUBSCRIBE", "__keyevent@0__:set"], "key names of every tenant"),
    ]:
        with pytest.raises(redis.ResponseError) as info:
            a.execute_command(*cmd)
        assert expect.lower() in str(info.value).lower(), (cmd, str(info.value))
    with pytest.raises(redis.ResponseError, match="unknown command 'NOTACOMMAND'"):
        a.execute_command("NOTACOMMAND", "x")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        a.execute_command("OBJECT", "NOPE", "k")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        a.execute_command("SELECT", "3")
    assert a.ping()  # the connection is still fine


def test_connection_commands(gw: Gw):
    a = gw.client(gw.a)
    assert a.execute_command("SELECT", "0") in (True, b"OK")
    assert a.echo("hi") == b"hi"
    assert a.client_setname("me") and a.client_getname() in ("me", b"me")
    cid = a.client_id()
    assert isinstance(cid, int) and cid > 0
    assert a.execute_command("CLIENT", "NO-EVICT", "on") == b"OK"
    assert b"name=me" in a.execute_command("CLIENT", "INFO")
    assert a.execute_command("ACL", "WHOAMI") == gw.a.slug.encode()
    assert a.command_count() > 100
    with pytest.raises(redis.ResponseError, match=r"max number of clients|not allowed|WAIT"):
        a.execute_command("WAIT", "1", "10")


def test_pipeline_of_10000_commands(gw: Gw):
    a = gw.client(gw.a)
    a.delete("counter")
    p = a.pipeline(transaction=False)
    for i in range(10_000):
        p.incr("counter")
        if i % 1000 == 0:
            p.echo(f"mark{i}")
    out = p.execute()
    ints = [x for x in out if isinstance(x, int)]
    assert ints == list(range(1, 10_001))
    assert [x for x in out if isinstance(x, bytes)] == [f"mark{i}".encode()
                                                         for i in range(0, 10_000, 1000)]


def _resp(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)


def test_one_chunk_mixing_every_kind_of_reply_keeps_order(gw: Gw):
    """Pass-through replies (sent on as runs), replies the gateway writes itself (held behind
    them), transformed replies and errors, all in one pipelined chunk."""
    t = gw.a
    cmds = [("AUTH", t.slug, t.password), ("DEL", "mx1", "mxl"), ("SET", "mx1", "a"),
            ("GET", "mx1"), ("PING",), ("GET", "mx1"), ("INCR", "mx1"), ("ECHO", "e"),
            ("SELECT", "0"), ("RPUSH", "mxl", "v1", "v2"), ("LMPOP", "1", "mxl", "LEFT"),
            ("GET", "mx1"), ("PING", "p"), ("GET", "nokey"), ("STRLEN", "mx1"),
            ("SCAN", "0", "MATCH", "mxl", "COUNT", "1000"), ("GET", "mx1"), ("QUIT",)]
    out = _raw(gw, b"".join(_resp(*c) for c in cmds))
    assert out == (b"+OK\r\n:0\r\n+OK\r\n$1\r\na\r\n+PONG\r\n$1\r\na\r\n"
                   b"-ERR value is not an integer or out of range\r\n$1\r\ne\r\n+OK\r\n"
                   b":2\r\n*2\r\n$3\r\nmxl\r\n*1\r\n$2\r\nv1\r\n$1\r\na\r\n$1\r\np\r\n"
                   b"$-1\r\n:1\r\n*2\r\n$1\r\n0\r\n*1\r\n$3\r\nmxl\r\n$1\r\na\r\n+OK\r\n")


def test_concurrent_pipelines_on_one_shared_connection_get_their_own_replies(gw: Gw):
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            c = gw.client(gw.a)
            c.delete(f"cp{i}")
            for _ in range(5):
                p = c.pipeline(transaction=False)
                for j in range(200):
                    p.incr(f"cp{i}")
                    if j % 50 == 0:
                        p.echo(f"w{i}")
                        p.get(f"cp{i}")
                out = p.execute()
                assert [x for x in out if x == f"w{i}".encode()] == [f"w{i}".encode()] * 4
                ints = [x for x in out if isinstance(x, int)]
                assert ints == sorted(ints) and len(ints) == 200
            assert c.get(f"cp{i}") == b"1000"
            c.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors[0]


def test_ten_megabyte_value(gw: Gw):
    a = gw.client(gw.a)
    value = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    assert a.set("big", value)
    assert a.get("big") == value
    assert a.strlen("big") == len(value)
    a.delete("big")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_watch_multi_exec(gw: Gw, proto: int):
    a, a2 = gw.client(gw.a, protocol=proto), gw.client(gw.a, protocol=proto)
    a.set("bal", 10)
    with a.pipeline() as p:
        p.watch("bal")
        bal = int(p.get("bal"))
        p.multi()
        p.set("bal", bal - 1)
        p.get("bal")
        assert p.execute() == [True, b"9"]
    with a.pipeline() as p:  # a concurrent change aborts the transaction
        p.watch("bal")
        a2.set("bal", 100)
        p.multi()
        p.set("bal", 0)
        with pytest.raises(redis.WatchError):
            p.execute()
    assert a.get("bal") == b"100"
    # A refused command inside MULTI aborts EXEC like a syntax error would.
    p = a.pipeline()
    p.set("bal", 1)
    p.execute_command("FLUSHALL")
    with pytest.raises(redis.ResponseError):
        p.execute()
    assert a.get("bal") == b"100"
    # Keyed replies inside EXEC lose the prefix too.
    a.rpush("tl", "x")
    p = a.pipeline()
    p.lmpop(1, "tl", direction="LEFT")
    p.keys("tl*")
    with pytest.raises(redis.ResponseError):  # KEYS is not transactional here
        p.execute()
    p = a.pipeline()
    p.lmpop(1, "tl", direction="LEFT")
    assert p.execute() == [[b"tl", [b"x"]]]


def test_blocking_pops_do_not_block_others(gw: Gw):
    a, other = gw.client(gw.a), gw.client(gw.a)
    a.delete("q", "q2")
    t0 = time.monotonic()
    assert a.blpop(["q"], timeout=0.3) is None
    assert 0.25 < time.monotonic() - t0 < 3
    result = {}

    def waiter():
        result["v"] = gw.client(gw.a).blpop(["q"], timeout=5)
    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    for _ in range(50):  # the shared connection keeps serving while one client blocks
        other.incr("busy")
    assert time.monotonic() - t0 < 2
    other.rpush("q", "hello")
    th.join(5)
    assert result["v"] == (b"q", b"hello")
    other.rpush("q2", "m")
    assert a.blmove("q2", "q3", 1, "LEFT", "RIGHT") == b"m"
    a.xadd("st", {"f": "v"})
    got = a.xread({"st": "0-0"}, block=100)
    assert got[0][0] == b"st"
    assert a.xread({"st": "$"}, block=200) in ([], None, {})


def test_pubsub_between_two_clients_of_one_tenant(gw: Gw):
    sub = gw.client(gw.a).pubsub()
    sub_b = gw.client(gw.b).pubsub()
    sub.subscribe("news")
    sub.psubscribe("ne*")
    sub_b.subscribe("news")
    for s, want in ((sub, {"subscribe", "psubscribe"}), (sub_b, {"subscribe"})):
        deadline = time.monotonic() + 3
        while want and time.monotonic() < deadline:
            m = s.get_message(timeout=0.2)
            if m:
                want.discard(m["type"])
        assert not want
    pub = gw.client(gw.a)
    assert pub.publish("news", "hello") == 2  # the channel and the pattern subscription
    got = []
    deadline = time.monotonic() + 3
    while len(got) < 2 and time.monotonic() < deadline:
        m = sub.get_message(timeout=0.2)
        if m and m["type"] in ("message", "pmessage"):
            got.append(m)
    assert {(m["type"], m["channel"], m["data"]) for m in got} == {
        ("message", b"news", b"hello"), ("pmessage", b"news", b"hello")}
    assert next(m for m in got if m["type"] == "pmessage")["pattern"] == b"ne*"
    assert sub_b.get_message(timeout=0.3) is None  # tenant b hears nothing of a's channel
    assert pub.pubsub_channels() == [b"news"]
    assert pub.pubsub_numsub("news") == [(b"news", 1)]
    sub.unsubscribe()
    sub.punsubscribe()
    sub.close()
    sub_b.close()


def test_redis_cli_works_unmodified(gw: Gw):
    t = gw.a
    assert redis_cli(gw.port, t, "SET", "cli", "hello").strip() == "OK"
    assert redis_cli(gw.port, t, "GET", "cli").strip() == "hello"
    assert "cli" in redis_cli(gw.port, t, "--scan")
    assert "not allowed" in redis_cli(gw.port, t, "FLUSHALL")
    assert redis_cli(gw.port, gw.b, "GET", "cli").strip() == ""
    out = redis_cli(gw.port, t, stdin="SET piped 1\nINCR piped\nGET piped\n")
    assert out.split() == ["OK", "2", "2"]
    assert "keys=" in redis_cli(gw.port, t, "INFO", "keyspace")


def _raw(gw: Gw, payload: bytes, read: float = 0.5) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as s:
        s.sendall(payload)
        s.settimeout(read)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
        return out


def test_inline_commands_and_auth_errors(gw: Gw):
    t = gw.a
    out = _raw(gw, f"PING\r\nAUTH {t.slug} {t.password}\r\nSET \"in line\" 'v w'\r\n"
                   "GET \"in line\"\r\nQUIT\r\n".encode())
    assert out == b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n$3\r\nv w\r\n+OK\r\n"
    out = _raw(gw, f"AUTH {t.slug} wrong\r\nAUTH nosuchtenant{t.slug} x\r\nAUTH onlypw\r\n".encode())
    lines = out.split(b"\r\n")
    assert lines[0] == lines[1] == b"-WRONGPASS invalid username-password pair or user is disabled."
    assert lines[2].startswith(b"-WRONGPASS the gateway needs a user name")


def test_malformed_and_oversized_frames_close_only_that_client(gw: Gw):
    good = gw.client(gw.a)
    good.set("still", "here")
    t = gw.a
    auth = f"*3\r\n$4\r\nAUTH\r\n${len(t.slug)}\r\n{t.slug}\r\n${len(t.password)}\r\n{t.password}\r\n"
    out = _raw(gw, auth.encode() + b"*2\r\n$3\r\nGET\r\n!x\r\n")
    assert out == b"+OK\r\n-ERR Protocol error: expected '$', got '!'\r\n"
    out = _raw(gw, auth.encode() + b"*x\r\n")
    assert out.endswith(b"-ERR Protocol error: invalid multibulk length\r\n")
    # A bulk string over max_bulk_size (16MB here) is refused from its header alone.
    out = _raw(gw, auth.encode() + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000000\r\nabc")
    assert out == b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
    # Before AUTH the limits are small, as in Redis.
    out = _raw(gw, b"*2\r\n$4\r\nAUTH\r\n$100000\r\n")
    assert out == b"-ERR Protocol error: invalid bulk length\r\n"
    assert good.get("still") == b"here"


def test_requests_split_across_packets(gw: Gw):
    t = gw.a
    auth = f"*3\r\n$4\r\nAUTH\r\n${len(t.slug)}\r\n{t.slug}\r\n${len(t.password)}\r\n{t.password}\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as s:
        s.sendall(auth.encode())
        assert s.recv(100) == b"+OK\r\n"
        # split at an element boundary, inside a header and inside a value
        for part in (b"*3\r\n$3\r\nSET\r\n", b"$5\r\nsplit\r\n$", b"3\r\nv", b"al\r\n*2\r\n$3\r\nGET\r\n",
                     b"$5\r\nsplit\r\n"):
            s.sendall(part)
            time.sleep(0.05)
        got = b""
        while len(got) < len(b"+OK\r\n$3\r\nval\r\n"):
            got += s.recv(100)
        assert got == b"+OK\r\n$3\r\nval\r\n"


def test_hello_and_reset(gw: Gw):
    t = gw.a
    r = redis.Redis(port=gw.port, protocol=3, username=t.slug, password=t.password)
    assert r.ping()
    assert r.execute_command("HELLO", "3")[b"proto"] == 3
    out = _raw(gw, f"HELLO 3 AUTH {t.slug} {t.password} SETNAME x\r\nCLIENT GETNAME\r\n"
                   "RESET\r\nGET k\r\n".encode())
    assert out.startswith(b"%7\r\n")
    assert b"$1\r\nx\r\n+RESET\r\n-NOAUTH" in out
    out = _raw(gw, b"HELLO 4\r\nHELLO 3\r\n")
    assert out.startswith(b"-NOPROTO")
    assert b"-NOAUTH HELLO must be called" in out


def test_streams_groups_and_shard_channels(gw: Gw):
    a, b = gw.client(gw.a), gw.client(gw.b)
    a.delete("events")
    a.xadd("events", {"n": "1"})
    a.xgroup_create("events", "g", id="0")
    got = a.xreadgroup("g", "c1", {"events": ">"}, count=10, block=100)
    assert got[0][0] == b"events" and got[0][1][0][1] == {b"n": b"1"}
    assert a.xinfo_groups("events")[0]["name"] == b"g"
    assert b.exists("events") == 0
    ps = a.pubsub()
    ps.ssubscribe("shard")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = ps.get_sharded_message(timeout=0.2)
        if m and m["type"] == "ssubscribe":
            break
    assert b.spublish("shard", "nope") == 0
    assert a.spublish("shard", "yes") == 1
    msg = None
    deadline = time.monotonic() + 3
    while msg is None and time.monotonic() < deadline:
        m = ps.get_sharded_message(timeout=0.2)
        if m and m["type"] == "smessage":
            msg = m
    assert msg["channel"] == b"shard" and msg["data"] == b"yes"
    ps.close()


def test_resp3_push_messages_and_commands_while_subscribed(gw: Gw):
    t = gw.a
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as s:
        s.sendall(f"HELLO 3 AUTH {t.slug} {t.password}\r\nSUBSCRIBE ch\r\nPING\r\n".encode())
        time.sleep(0.3)
        gw.client(gw.a).publish("ch", "pushed")
        s.sendall(b"SET in-sub 1\r\nGET in-sub\r\nUNSUBSCRIBE\r\nGET in-sub\r\n")
        time.sleep(0.3)
        out = s.recv(65536)
    body = out[out.index(b">3\r\n"):]
    assert body == (b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n+PONG\r\n"
                    b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$6\r\npushed\r\n"
                    b"+OK\r\n$1\r\n1\r\n>3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n$1\r\n1\r\n")


def test_client_reply_modes(gw: Gw):
    t = gw.a
    out = _raw(gw, f"AUTH {t.slug} {t.password}\r\nCLIENT REPLY OFF\r\nSET r 1\r\nINCR r\r\n"
                   "CLIENT REPLY ON\r\nCLIENT REPLY SKIP\r\nINCR r\r\nGET r\r\n".encode())
    assert out == b"+OK\r\n+OK\r\n$1\r\n3\r\n"


def test_suspended_tenant_is_disconnected(gw: Gw):
    import json
    import urllib.request
    c = gw.client(gw.b)
    assert c.ping()
    conn = c.connection_pool.get_connection()
    url = gw.running.url(f"/admin/tenants/{gw.b.slug}")
    req = urllib.request.Request(url, data=json.dumps({"status": "suspended"}).encode(),
                                 method="PATCH", headers={"authorization": "Bearer test-admin-token",
                                                          "content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5).read()
        with pytest.raises(redis.ResponseError, match="suspended"):
            conn.read_response()
        with pytest.raises(redis.RedisError, match="suspended"):
            gw.client(gw.b).ping()
    finally:
        req = urllib.request.Request(url, data=json.dumps({"status": "active"}).encode(),
                                     method="PATCH",
                                     headers={"authorization": "Bearer test-admin-token",
                                              "content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()


def test_metrics_count_operations(gw: Gw):
    import urllib.request
    a = gw.client(gw.a)
    a.set("m", 1)
    with pytest.raises(redis.ResponseError):
        a.execute_command("FLUSHALL")
    with pytest.raises(redis.ResponseError):
        a.execute_command("INCRBY", "m", "x")  # an upstream error
    time.sleep(1.3)
    text = urllib.request.urlopen(gw.running.url("/metrics"), timeout=5).read().decode()

    def value(outcome: str) -> float:
        for line in text.splitlines():
            if line.startswith("ogelkit_operations_total") and f'outcome="{outcome}"' in line \
                    and 'protocol="redis"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    assert value("ok") > 0 and value("rejected") >= 1 and value("error") >= 1
    assert 'ogelkit_connections_active{protocol="redis"}' in text


def test_arrays_after_unsubscribing_are_replies_again(gw: Gw):
    a = gw.client(gw.a)
    a.delete("msgs")
    a.rpush("msgs", "message", "x", "y")
    t = gw.a
    out = _raw(gw, f"AUTH {t.slug} {t.password}\r\nWATCH msgs\r\nSUBSCRIBE c\r\nUNSUBSCRIBE c\r\n"
                   "LRANGE msgs 0 -1\r\nUNWATCH\r\n".encode())
    assert out.endswith(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n"
                        b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\ny\r\n+OK\r\n")
