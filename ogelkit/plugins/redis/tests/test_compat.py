"""What redis-py users rely on, through the gateway (issue 16, client compatibility).

Cases modelled on what redis-py's own suite exercises (handshake, CLIENT subcommands, INFO
parsing, pipelines and transactions, pub/sub, scan iterators, health checks), written anew,
with real redis-py (sync and asyncio) against the real Redis behind the gateway.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis_support import Gw, cleanup, config_text, gateway, new_tenants

from ogelkit.testing import running_gateway
from ogelkit.testing.services import redis_url

INTELLIGENCE = ('[[layers]]\ntype = "intelligence"\nstorm_threshold = 5\n'
                'storm_window = "1s"\n')


def rejected(gw: Gw) -> float:
    try:
        return gw.running.metric("ogelkit_operations_total", protocol="redis",
                                 outcome="rejected")
    except AssertionError:
        return 0.0


# -- handshake ------------------------------------------------------------------------------
def test_redis_py_handshake_sets_lib_info_and_costs_nothing(gw: Gw):
    before = rejected(gw)
    r = gw.client(gw.a, lib_name="ogel-test", lib_version="9.9")
    assert r.ping() is True
    info = r.client_info()
    assert info["lib-name"] == "ogel-test" and info["lib-ver"] == "9.9"
    assert r.execute_command("CLIENT SETINFO", "LIB-NAME", "other") in (True, b"OK")
    assert any(c.get("lib-name") == "other" for c in r.client_list())
    with pytest.raises(redis.ResponseError, match="Unrecognized option 'color'"):
        r.execute_command("CLIENT SETINFO", "color", "red")
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.execute_command("CLIENT SETINFO", "LIB-VER", "1 2")
    # redis-py 8's maintenance-notification probe: Redis 7.0's own unknown-subcommand answer.
    with pytest.raises(redis.ResponseError) as exc:
        r.execute_command("CLIENT MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none")
    assert str(exc.value) == "unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP."
    real = redis.Redis.from_url(redis_url())
    with pytest.raises(redis.ResponseError) as direct:
        real.execute_command("CLIENT MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none")
    assert str(direct.value) == str(exc.value)
    real.close()
    time.sleep(1.3)  # metrics are flushed about once a second
    assert rejected(gw) == before  # neither the handshake nor the probe is a refusal
    r.close()


def test_client_subcommands_for_the_own_connection(gw: Gw):
    r = gw.client(gw.a, single_connection_client=True)
    assert r.client_setname("worker-1") is True and r.client_getname() == "worker-1"
    own = r.client_id()
    assert isinstance(own, int) and r.client_info()["id"] == own
    assert r.client_no_evict("on") in (True, b"OK")
    assert r.execute_command("CLIENT REPLY", "ON") in (True, b"OK")
    assert [c["id"] for c in r.client_list(client_id=[own])] == [str(own)]  # parsed as text
    r.close()


@pytest.mark.parametrize("arg", ["0_3", " 3", "+3", "03", "3.0"])
def test_hello_protover_is_read_like_redis(gw: Gw, arg: str):
    r = gw.client(gw.a)
    with pytest.raises(redis.ResponseError, match="Protocol version is not an integer"):
        r.execute_command("HELLO", arg)
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", "4")
    flat = r.execute_command("HELLO", "2")  # RESP2: a flat list of field, value
    assert dict(zip(flat[::2], flat[1::2], strict=True))[b"proto"] == 2
    r.close()


# -- policy refusals do not cascade ---------------------------------------------------------
def test_a_forbidden_loop_never_backs_off_the_tenants_gets():
    tenants = new_tenants(1)
    with gateway(tenants, layers=INTELLIGENCE) as gw:
        looping, reading = gw.client(gw.a), gw.client(gw.a)
        reading.set("k", "v")
        stop, failures = threading.Event(), []

        def read() -> None:
            while not stop.is_set():
                try:
                    assert reading.get("k") == b"v"
                except redis.ResponseError as exc:  # a back-off would show up here
                    failures.append(str(exc))

        t = threading.Thread(target=read)
        t.start()
        try:
            for _ in range(1000):
                with pytest.raises(redis.ResponseError, match="not allowed"):
                    looping.execute_command("CONFIG", "GET", "maxmemory")
        finally:
            stop.set()
            t.join()
        assert failures == []
        assert reading.get("k") == b"v" and looping.get("k") == b"v"


async def test_asyncio_handshake_and_forbidden_loop():
    tenants = new_tenants(1)
    try:
        async with running_gateway(config_text(tenants, layers=INTELLIGENCE)) as running:
            t = tenants[0]
            looping = aioredis.Redis(port=running.port("redis"), username=t.slug,
                                     password=t.password, lib_name="aio-test")
            reading = aioredis.Redis(port=running.port("redis"), username=t.slug,
                                     password=t.password, protocol=3)
            await reading.set("k", "v")
            assert (await looping.client_info())["lib-name"] == "aio-test"
            for _ in range(300):
                with pytest.raises(redis.ResponseError, match="not allowed"):
                    await looping.execute_command("CONFIG", "GET", "maxmemory")
                assert await reading.get("k") == b"v"
            await looping.aclose()
            await reading.aclose()
    finally:
        cleanup(tenants)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


test_asyncio_handshake_and_forbidden_loop = pytest.mark.anyio(
    test_asyncio_handshake_and_forbidden_loop)


# -- malformed input after good requests ------------------------------------------------------
@pytest.mark.parametrize("bad", [b"*2\r\n$3\r\nGET\r\n:5\r\n", b"*2\r\n$3\r\nGET\r\n$-5\r\n",
                                 b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n"])
def test_a_protocol_error_comes_after_the_replies_owed(gw: Gw, bad: bytes):
    """Like Redis: the requests before the bad one are answered, then the protocol error,
    then the connection closes (the gateway used to close at once: no reply at all)."""
    import socket
    t = gw.a
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(t.slug), t.slug.encode(), len(t.password), t.password.encode()))
        assert s.recv(100) == b"+OK\r\n"
        s.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n" * 5 + bad)
        got = b""
        while chunk := s.recv(65536):  # the gateway closes: recv returns b""
            got += chunk
    replies = got.split(b"\r\n")
    assert replies[:5] == [b"$-1"] * 5, got
    assert replies[5].startswith(b"-ERR Protocol error"), got
    assert gw.client(gw.b).ping()
