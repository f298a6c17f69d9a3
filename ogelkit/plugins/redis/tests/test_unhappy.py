"""Unhappy paths against a private redis-server: upstream killed and restarted mid-use,
keyspace notifications (the shared test server does not emit them), unknown tenants."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis_support import PrivateRedis, gateway, new_tenants


def test_upstream_killed_and_restarted(private_redis: PrivateRedis):
    tenants = new_tenants(2)
    with gateway(tenants, url=private_redis.url, backend='connect_timeout = "1s"') as gw:
        a = gw.client(gw.a, socket_timeout=5)
        assert a.set("k", "v")
        errors: list[Exception] = []

        def blocked():  # a client blocked in BLPOP when the server dies
            try:
                gw.client(gw.a, socket_timeout=5).blpop(["q"], timeout=10)
            except Exception as exc:
                errors.append(exc)
        th = threading.Thread(target=blocked)
        th.start()
        in_multi = gw.client(gw.a, socket_timeout=5)
        conn = in_multi.connection_pool.get_connection()
        conn.send_command("MULTI")
        assert conn.read_response() in (b"OK", "OK")
        time.sleep(0.3)
        private_redis.kill()
        th.join(6)
        assert errors and "connection lost" in str(errors[0]).lower()
        # the transaction lived on the lost connection: that client is told and closed
        with pytest.raises(redis.RedisError):
            conn.send_command("SET", "x", "1")
            conn.read_response()
            conn.read_response()
        with pytest.raises(redis.RedisError) as info:
            a.get("k")
        assert "upstream" in str(info.value).lower() or "lost" in str(info.value).lower()
        # the gateway itself still answers (and says why it cannot serve)
        assert a.echo("still here") == b"still here"
        private_redis.start()  # empty server: data and ACL users are gone
        deadline = time.monotonic() + 10
        while True:
            try:
                assert a.set("k", "again")  # the ACL user is re-created on reconnect
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert a.get("k") == b"again"
        assert gw.client(gw.b).get("k") is None


def test_keyspace_notifications_are_namespaced(private_redis: PrivateRedis):
    tenants = new_tenants(2)
    with gateway(tenants, url=private_redis.url) as gw:
        a, b = gw.client(gw.a), gw.client(gw.b)
        ps = a.pubsub()
        ps.subscribe("__keyspace@0__:watched")
        ps.psubscribe("__keyspace@0__:w*")
        got = []
        deadline = time.monotonic() + 3
        while len(got) < 2 and time.monotonic() < deadline:
            m = ps.get_message(timeout=0.2)
            if m:
                got.append(m["type"])
        b.set("watched", 1)  # the other tenant's key of the same name: silence
        a.set("watched", 1)
        msgs = []
        deadline = time.monotonic() + 3
        while len(msgs) < 2 and time.monotonic() < deadline:
            m = ps.get_message(timeout=0.2)
            if m and m["type"] in ("message", "pmessage"):
                msgs.append(m)
        assert {(m["type"], m["channel"], m["data"]) for m in msgs} == {
            ("message", b"__keyspace@0__:watched", b"set"),
            ("pmessage", b"__keyspace@0__:watched", b"set")}
        assert ps.get_message(timeout=0.3) is None
        ps.close()


def test_unknown_tenant_and_database():
    tenants = new_tenants(1)
    with gateway(tenants) as gw:
        t = gw.a
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=gw.port, username="nobody-here", password="x").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=gw.port, username=t.slug, password="wrong").ping()
        with pytest.raises(redis.ResponseError, match="no Redis database"):
            redis.Redis(port=gw.port, username=f"{t.slug}.other", password=t.password).ping()
        assert redis.Redis(port=gw.port, username=f"{t.slug}.main", password=t.password).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=gw.port).get("k")  # no AUTH: NOAUTH


def test_clients_vanishing_mid_command_leak_nothing(gw):
    import socket

    t = gw.a
    big = gw.client(t)
    big.set("huge", b"x" * (4 * 1024 * 1024))
    auth = f"AUTH {t.slug} {t.password}\r\n".encode()
    for payload in (b"GET huge\r\n", b"BLPOP nothing 5\r\n", b"SUBSCRIBE c\r\n",
                    b"MULTI\r\nSET a 1\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc"):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(auth + payload)
        time.sleep(0.1)
        s.close()  # gone before (or while) the answer comes
    # the AUTH itself interrupted
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(auth)
    s.close()
    time.sleep(0.5)
    ctx = gw.running.context
    assert big.get("huge") is not None and big.ping()
    backend = ctx.backends["r"]
    pools = backend.tdbs[(t.slug, "main")].pools
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (pools.dedicated - sum(map(len, pools.idle.values()))):
        time.sleep(0.1)
    assert pools.dedicated - sum(map(len, pools.idle.values())) == 0  # none left in use
    assert ctx.sessions.count(t.slug) == 1  # only `big`
    big.delete("huge")


def test_deleting_a_database_closes_its_clients():
    import asyncio

    tenants = new_tenants(1)
    with gateway(tenants) as gw:
        c = gw.client(gw.a)
        assert c.set("k", 1)
        conn = c.connection_pool.get_connection()
        ctx = gw.running.context
        backend = ctx.backends["r"]
        loop = gw.running.gateway.frontdoors[0].loop  # the gateway thread's event loop

        async def delete():
            tenant = await ctx.store.get_tenant(gw.a.slug)
            db = await ctx.store.get_database(gw.a.slug, "main")
            await backend.deprovision(tenant, db)
            await ctx.store.delete_database(gw.a.slug, "main")
        asyncio.run_coroutine_threadsafe(delete(), loop).result(10)
        with pytest.raises(redis.RedisError, match="was deleted"):
            conn.read_response()
        time.sleep(0.5)  # the directory's cache_ttl in these tests is 0.2s
        with pytest.raises(redis.RedisError, match="no Redis database"):
            gw.client(gw.a).get("k")


def test_a_client_that_never_authenticates_is_timed_out():
    tenants = new_tenants(1)
    with gateway(tenants, backend='handshake_timeout = "0.5s"') as gw:
        import socket
        silent = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        chatty = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        chatty.sendall(b"PING\r\n")  # commands before AUTH do not extend the deadline
        assert chatty.recv(100).startswith(b"-NOAUTH")
        ok = gw.client(gw.a)  # an authenticated client is not affected
        assert ok.ping()
        started = time.monotonic()
        for sock in (silent, chatty):
            data = b""
            while chunk := sock.recv(1000):
                data += chunk
            assert data.endswith(b"-ERR authentication timed out: AUTH within 0.5 s of "
                                 b"connecting\r\n"), data
            sock.close()
        assert 0.3 < time.monotonic() - started < 3
        assert ok.ping() and ok.connection_pool._created_connections == 1
