"""Fairness bounds (issue 16, ``[limits]``): a client that pipelines without reading is
paused, not buffered without end, and one past the memory ceiling is refused, while the
gateway's other tenants are served promptly."""

from __future__ import annotations

import socket
import time

from redis_support import Gw, Tenant, gateway, new_tenants

LIMITS = '[limits]\nmax_inflight = 64\nconnection_output = "1MB"\n'


def slow_reader(gw: Gw, tenant: Tenant) -> socket.socket:
    """An authenticated raw client with a tiny receive buffer, so that what it does not
    read stays in the gateway."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    s.settimeout(10)
    s.sendall(f"AUTH {tenant.slug} {tenant.password}\r\n".encode())
    assert s.recv(100) == b"+OK\r\n"
    return s


def redis_connections(gw: Gw) -> list:
    door = next(d for d in gw.running.gateway.frontdoors if d.protocol == "redis")
    return list(door.clients)


def ping_ms(gw: Gw, tenant: Tenant) -> float:
    client = gw.client(tenant, socket_timeout=5)
    try:
        t = time.perf_counter()
        assert client.ping()
        return (time.perf_counter() - t) * 1000
    finally:
        client.close()


def test_a_pipelining_client_that_does_not_read_is_paused_and_others_are_served():
    with gateway(new_tenants(2), extra=LIMITS) as gw:
        gw.client(gw.a).set("v", b"x" * 8192)
        s = slow_reader(gw, gw.a)
        s.setblocking(False)
        pipeline = b"GET v\r\n" * 20_000
        sent, stuck_since = 0, None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent += s.send(pipeline)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 1.0:
                    break  # the gateway stopped reading this client
            time.sleep(0.01)
        assert stuck_since is not None, f"the gateway read all {sent} bytes"
        # What the gateway asked the upstream for this client stays under the bound.
        owed = [c.sent - c.recv for c in redis_connections(gw)]
        assert max(owed) <= 64 + 1, owed
        assert sent < 200 * len(pipeline)
        # Another tenant's client is served at once meanwhile.
        assert max(ping_ms(gw, gw.b) for _ in range(20)) < 500
        s.close()


def test_a_client_past_the_output_ceiling_is_refused_and_others_keep_working():
    with gateway(new_tenants(2), extra=LIMITS) as gw:
        a = gw.client(gw.a)
        a.rpush("big", *[b"e" * 500] * 20_000)  # a 10 MB reply: over the 1 MB ceiling
        # (and over what the kernel's socket buffers take)
        s = slow_reader(gw, gw.a)
        s.sendall(b"LRANGE big 0 -1\r\n")
        guard = gw.running.gateway.context.output_guard
        deadline = time.monotonic() + 10
        while guard.refused == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guard.refused == 1
        data = b""
        try:
            while chunk := s.recv(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass  # aborted: the client did not read its refusal within a second either
        # The connection is gone (EOF or reset). A client that reads within the second's
        # grace gets what was buffered, then the refusal in its protocol; one that does
        # not is dropped with its buffer.
        refused = data.endswith(b"\r\n") and b"-OOM out of memory: " in data[-400:]
        assert refused or len(data) < 10_000_000, data[-400:]
        assert a.ping() and ping_ms(gw, gw.b) < 500
        assert a.llen("big") == 20_000  # the tenant's other connection keeps working
        a.close()



def test_a_long_chunk_of_requests_runs_over_several_loop_turns(monkeypatch):
    # 150 connections each sending 64 kB chunks of junk lines (~4,000 requests the gateway
    # answers itself) held every other client for a whole loop turn of 150 x 20 ms.
    from ogelkit_redis.connection import REQUESTS_PER_TURN, RedisConnection
    turns = []
    original = RedisConnection._next_turn
    monkeypatch.setattr(RedisConnection, "_next_turn",
                        lambda self: turns.append(1) or original(self))
    with gateway(new_tenants(1)) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(f"AUTH {gw.a.slug} {gw.a.password}\r\n".encode())
        assert s.recv(100) == b"+OK\r\n"
        n = REQUESTS_PER_TURN * 10
        s.sendall(b"NOSUCH x\r\n" * n + b"*2\r\n$4\r\nECHO\r\n$1\r\ne\r\n" * n + b"PING\r\n")
        data = b""
        while not data.endswith(b"+PONG\r\n"):
            chunk = s.recv(1 << 20)
            assert chunk, "closed"
            data += chunk
        s.close()
        lines = data.split(b"\r\n")
        errors = [x for x in lines if x.startswith(b"-ERR unknown command")]
        assert len(errors) == n and lines.index(errors[-1]) < lines.index(b"e")
        assert lines.count(b"e") == n
        assert len(turns) >= 15, len(turns)
