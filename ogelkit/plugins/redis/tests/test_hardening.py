"""Hostile and huge input on the Redis front door: raw sockets against a real gateway.

Each test checks that one client's input costs that client (an error, a close, time linear
in its size) and never stalls the gateway's other clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import hiredis
import pytest
from redis_support import Gw, Tenant, admin, gateway, new_tenants


def authed(gw: Gw, tenant: Tenant, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    s.sendall(f"AUTH {tenant.slug} {tenant.password}\r\n".encode())
    assert s.recv(100) == b"+OK\r\n"
    return s


def until_closed(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


@contextmanager
def ping_latency(gw: Gw, tenant: Tenant) -> Iterator[list[float]]:
    """Another client pings the gateway meanwhile; yields the list of its latencies."""
    client = gw.client(tenant, socket_timeout=30)
    assert client.ping()
    latencies: list[float] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            client.ping()
            latencies.append(time.perf_counter() - t)
            stop.wait(0.005)
    th = threading.Thread(target=pinger)
    th.start()
    try:
        yield latencies
    finally:
        stop.set()
        th.join(30)
        client.close()


HUGE = b"-ERR Protocol error: invalid multibulk length\r\n"


@pytest.mark.parametrize(("payload", "expect"), [
    (b"*2147483647\r\n", HUGE),  # the first header of a chunk
    (b"*1\r\n$4\r\nPING\r\n*2147483647\r\n", b"+PONG\r\n" + HUGE),  # after a request
    (b"*1\r\n*2147483647\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),  # nested
])
def test_a_huge_array_header_is_refused_before_anything_is_allocated(gw: Gw, payload: bytes,
                                                                      expect: bytes):
    s = authed(gw, gw.a)
    with ping_latency(gw, gw.b) as latencies:
        started = time.monotonic()
        s.sendall(payload)  # refused at the header: no need to wait for its elements
        data = until_closed(s)
        elapsed = time.monotonic() - started
        time.sleep(0.1)  # a ping or two after it
    s.close()
    assert data == expect
    assert elapsed < 1, elapsed
    assert latencies and max(latencies) < 1, max(latencies)


def test_a_bulk_length_over_the_limit_is_refused_at_its_header(gw: Gw):
    s = authed(gw, gw.a)
    s.sendall(b"*2\r\n$3\r\nGET\r\n$99999999999\r\n")  # the test gateway allows 16MB
    assert until_closed(s) == b"-ERR Protocol error: invalid bulk length\r\n"
    s.close()


def test_a_huge_command_costs_linear_time_and_does_not_stall_others(gw: Gw):
    # 1M arguments (Redis's own limit is 1024*1024), 7 MB: read in ~30 chunks or more,
    # each parsed once; the other client's PINGs are answered meanwhile.
    n = 1_000_000
    request = b"*%d\r\n$5\r\nRPUSH\r\n$3\r\nbig\r\n%s" % (n + 2, b"$1\r\nx\r\n" * n)
    s = authed(gw, gw.a, timeout=30)
    try:
        with ping_latency(gw, gw.b) as latencies:
            started = time.monotonic()
            s.sendall(request)
            reply = s.recv(100)
            elapsed = time.monotonic() - started
            time.sleep(0.1)
        assert reply == b":%d\r\n" % n
        assert elapsed < 10, elapsed
        assert latencies and max(latencies) < 1, max(latencies)
        # the same for a request whose values are large: each waits whole before parsing
        value = b"v" * 1_000_000
        request = b"*%d\r\n$5\r\nRPUSH\r\n$4\r\nbig2\r\n%s" % (
            10 + 2, b"$%d\r\n%s\r\n" % (len(value), value) * 10)
        s.sendall(request)
        assert s.recv(100) == b":10\r\n"
        s.sendall(b"DEL big big2\r\n")
        assert s.recv(100) == b":2\r\n"
    finally:
        s.close()


def test_a_huge_reply_costs_linear_time_and_does_not_stall_others(gw: Gw):
    # The same on the way back: a 1M-element LRANGE reply (7 MB) is scanned once, however
    # many chunks it arrives in, and the other client's PINGs are answered meanwhile.
    n = 1_000_000
    s = authed(gw, gw.a, timeout=30)
    try:
        s.sendall(b"*%d\r\n$5\r\nRPUSH\r\n$4\r\nbigr\r\n%s" % (n + 2, b"$1\r\nx\r\n" * n))
        assert s.recv(100) == b":%d\r\n" % n
        expect = b"*%d\r\n%s" % (n, b"$1\r\nx\r\n" * n)
        with ping_latency(gw, gw.b) as latencies:
            started = time.monotonic()
            s.sendall(b"LRANGE bigr 0 -1\r\n")
            data = b""
            while len(data) < len(expect):
                data += s.recv(1 << 20)
            elapsed = time.monotonic() - started
            time.sleep(0.1)
        assert data == expect
        assert elapsed < 10, elapsed
        assert latencies and max(latencies) < 1, max(latencies)
        s.sendall(b"DEL bigr\r\n")
        assert s.recv(100) == b":1\r\n"
    finally:
        s.close()


def test_requests_cut_anywhere_are_parsed_once_and_right(gw: Gw):
    # Every cut point of a pipeline mixing multibulk and inline requests: the parser goes
    # on where it stopped (in a header, a length, a value, between arguments).
    pipeline = (b"*3\r\n$3\r\nSET\r\n$3\r\ncut\r\n$12\r\nhello\r\nworld\r\n"
                b"GET cut\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\n*0\r\n"
                b"*3\r\n$6\r\nAPPEND\r\n$3\r\ncut\r\n$1\r\n!\r\nPING\r\n")
    expect = (b"+OK\r\n$12\r\nhello\r\nworld\r\n$0\r\n\r\n:13\r\n+PONG\r\n")
    s = authed(gw, gw.a)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for cut in range(1, len(pipeline)):
            s.sendall(pipeline[:cut])
            time.sleep(0.002)  # most likely two reads for the gateway
            s.sendall(pipeline[cut:])
            data = b""
            while len(data) < len(expect):
                data += s.recv(1000)
            assert data == expect, cut
            s.sendall(b"DEL cut\r\n")
            assert s.recv(100) == b":1\r\n"
    finally:
        s.close()


BAD_BULK = b"-ERR Protocol error: invalid bulk length\r\n"
BAD_COUNT = b"-ERR Protocol error: invalid multibulk length\r\n"


@pytest.mark.parametrize("authenticated", [True, False])
@pytest.mark.parametrize(("payload", "expect"), [
    (b"*1\r\n$4_0\r\n" + b"x" * 40 + b"\r\n", BAD_BULK),  # int() reads 4_0 as 40
    (b"*1_0\r\n" + b"$4\r\nPING\r\n" * 10, BAD_COUNT),
    (b"*1\r\n$+4\r\nPING\r\n", BAD_BULK),
    (b"*+1\r\n$4\r\nPING\r\n", BAD_COUNT),
    (b"*1\r\n$ 4\r\nPING\r\n", BAD_BULK),
    (b"*1\r\n$4 \r\nPING\r\n", BAD_BULK),
    (b"* 1\r\n$4\r\nPING\r\n", BAD_COUNT),
    (b"*1\r\n$-1\r\n", BAD_BULK),
    (b"*1\r\n$\r\nPING\r\n", BAD_BULK),
    (b"*\r\n", BAD_COUNT),
    (b"*01\r\n$4\r\nPING\r\n", BAD_COUNT),
    (b"*1\r\n$04\r\nPING\r\n", BAD_BULK),
    (b"*1\r\n$\xd9\xa4\r\nPING\r\n", BAD_BULK),  # a non-ASCII digit (Arabic-Indic 4)
])
def test_lengths_are_ascii_digits_only(gw: Gw, payload: bytes, expect: bytes,
                                       authenticated: bool):
    s = (authed(gw, gw.a) if authenticated
         else socket.create_connection(("127.0.0.1", gw.port), timeout=10))
    s.sendall(payload)
    assert until_closed(s) == expect
    s.close()


@pytest.mark.parametrize(("element", "kind"), [
    (b"+k1", "+"), (b":1", ":"), (b"-k1", "-"), (b"*1\r\n$2\r\nk1", "*"), (b"_", "_"),
    (b"$0003\r\nk1x", None),  # a non-canonical bulk header: the Python parser decides
])
def test_request_elements_are_bulk_strings_only(gw: Gw, element: bytes, kind: str | None):
    # hiredis (the fast path) reads "+k1" as b"k1": the gateway must not run GET k1 on it.
    s = authed(gw, gw.a)
    s.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n" + element + b"\r\n")
    got = until_closed(s)
    s.close()
    if kind is None:  # Redis's string2ll refuses leading zeros
        assert got == b"+PONG\r\n" + BAD_BULK
    else:
        assert got == b"+PONG\r\n-ERR Protocol error: expected '$', got '" + kind.encode() \
            + b"'\r\n"


def test_negative_and_zero_counts_are_empty_requests(gw: Gw):
    s = authed(gw, gw.a)
    s.sendall(b"*-1\r\n*0\r\n*-5\r\n*1\r\n$4\r\nPING\r\n")
    assert s.recv(100) == b"+PONG\r\n"
    s.close()


class Resp:
    """A raw client socket and a hiredis reader for its replies."""

    def __init__(self, gw: Gw, tenant: Tenant, proto: int):
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        self.reader = hiredis.Reader()
        if proto == 3:
            self.sock.sendall(f"HELLO 3 AUTH {tenant.slug} {tenant.password}\r\n".encode())
        else:
            self.sock.sendall(f"AUTH {tenant.slug} {tenant.password}\r\n".encode())
        assert self.read() is not None

    def read(self):
        while (reply := self.reader.gets()) is False:
            self.reader.feed(self.sock.recv(65536))
        return reply

    def read_within(self, seconds: float):
        self.sock.settimeout(seconds)
        try:
            return self.read()
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(5)


@pytest.mark.parametrize("proto", [2, 3])
def test_a_subscribe_behind_an_unsubscribe_all_keeps_its_connection(gw: Gw, proto: int):
    # UNSUBSCRIBE (all) and SUBSCRIBE in one write: after the unsubscribe's confirmation the
    # client has no subscription for a moment, but its SUBSCRIBE is on the upstream
    # connection already. That connection must stay the client's (not go back to the idle
    # pool, where the next client of the database would get the subscription).
    c = Resp(gw, gw.a, proto)
    c.sock.sendall(b"SUBSCRIBE leak1\r\n")
    assert list(c.read()) == [b"subscribe", b"leak1", 1]
    c.sock.sendall(b"UNSUBSCRIBE\r\nSUBSCRIBE leak2\r\n")
    assert list(c.read()) == [b"unsubscribe", b"leak1", 0]
    assert list(c.read()) == [b"subscribe", b"leak2", 1]
    time.sleep(0.1)
    # the next client of the same tenant database that takes a dedicated connection
    other = Resp(gw, gw.a, proto)
    other.sock.sendall(b"SUBSCRIBE elsewhere\r\n")
    assert list(other.read()) == [b"subscribe", b"elsewhere", 1]
    publisher = gw.client(gw.a)
    assert publisher.publish("leak2", "for c") == 1
    assert list(c.read()) == [b"message", b"leak2", b"for c"]
    assert other.read_within(0.5) is None
    assert publisher.publish("elsewhere", "for other") == 1
    assert list(other.read()) == [b"message", b"elsewhere", b"for other"]
    # and out of pub/sub mode, both connections are in neutral state again
    for client in (c, other):
        client.sock.sendall(b"UNSUBSCRIBE\r\nPING\r\n")
        assert list(client.read())[::2] == [b"unsubscribe", 0]
        assert client.read() in (b"PONG", [b"pong", b""])
        client.sock.close()
    publisher.close()


@pytest.mark.parametrize("proto", [2, 3])
def test_a_refused_subscribe_is_answered_and_leaves_no_state(proto: int):
    tenants = new_tenants(1)
    with gateway(tenants) as gw:
        c = Resp(gw, gw.a, proto)
        c.sock.sendall(b"SET k v\r\n")
        assert c.read() == b"OK"  # the tenant's ACL user exists now
        admin().execute_command("ACL", "SETUSER", gw.a.acl_user, "resetchannels")  # none allowed
        c.sock.sendall(b"SUBSCRIBE nope\r\nPING\r\nGET k\r\n")
        err = c.read()
        assert isinstance(err, hiredis.ReplyError) and "NOPERM" in str(err), err
        assert c.read() in (b"PONG", [b"pong", b""])  # the client's own PING
        assert c.read() == b"v"  # back on the shared connection: a plain reply
        c.sock.close()


def test_reply_scan_goes_on_where_it_stopped():
    from ogelkit_redis import wire

    reply = (b"*4\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n%1\r\n+k\r\n~1\r\n_\r\n"
             b"|1\r\n+ttl\r\n:3\r\n$10\r\n0123456789\r\n")
    for cut in range(len(reply)):
        acc = bytearray(reply[:cut])
        at, left, need = wire.reply_scan(acc, 0, 1)
        assert left and need > len(acc)
        acc += reply[cut:] + b"+next\r\n"
        assert wire.reply_scan(acc, at, left) == (len(reply), 0, 0), cut
    assert wire.reply_scan(reply, 0, 1) == (len(reply), 0, 0)


@pytest.mark.parametrize("request_", [b"MULTI x", b"EXEC x", b"DISCARD x", b"UNWATCH x", b"WATCH"])
def test_a_transaction_command_with_wrong_arguments_changes_no_state(gw: Gw, request_: bytes):
    # "MULTI x" went to the server, which refused it, while the gateway took the connection
    # to be in a MULTI: under CLIENT REPLY OFF its replies were then never delivered.
    s = authed(gw, gw.a)
    name = request_.split()[0].decode().lower()
    s.sendall(request_ + b"\r\nSET k1 v\r\nCLIENT REPLY OFF\r\n" + request_
              + b"\r\nCLIENT REPLY ON\r\nPING\r\n")
    want = (f"-ERR wrong number of arguments for '{name}' command\r\n+OK\r\n+OK\r\n+PONG\r\n"
            .encode())
    got = b""
    while len(got) < len(want) and (chunk := s.recv(4096)):
        got += chunk
    s.close()
    assert got == want


def test_an_inline_request_goes_upstream_as_a_multibulk_request(gw: Gw):
    # The inline line went to the shared upstream connection as sent: Redis finds an inline
    # line's end with strchr, so a NUL in it left the upstream waiting for a line end
    # forever, and every later command of the tenant on that connection with it.
    s = authed(gw, gw.a)
    s.sendall(b"XREAD COUNT 6\x00*$26\r\nPING\r\n")
    got = b""
    while b"PONG" not in got and (chunk := s.recv(4096)):
        got += chunk
    s.close()
    assert got.startswith(b"-ERR") and got.endswith(b"+PONG\r\n"), got
    other = gw.client(gw.a, socket_timeout=5)
    assert other.set("k-inline", "v") and other.get("k-inline") == b"v"
