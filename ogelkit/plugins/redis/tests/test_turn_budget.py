"""Fairness by size (issue 16, ``resp_big``): one tenant's huge but valid work (a 1M-element
LRANGE read whole, pipelines of 10,000-key MGETs and 10,000 SETs) is done a bounded number
of bytes per event-loop turn, so another tenant's commands are answered meanwhile, and the
big replies still come whole and in order.

The bound is measured directly: the gateway's loop runs a probe callback on every turn, and
the request parser and the reply scanner are wrapped to add up the bytes they go over; the
most bytes between two probes is the most parsed or scanned in one turn. Before the bound,
one upstream read of a 1M-element reply (256 kB, ~18,000 elements) was scanned in a single
turn, twice (``reply_end`` then ``reply_scan``), and a client's 256 kB read of MGETs parsed
whole; every other client waited for it.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ogelkit_redis import connection as rconn
from ogelkit_redis import upstream as rup
from ogelkit_redis import wire
from redis_support import Gw, gateway, new_tenants

BIG = 1_000_000
MGET_KEYS = 10_000


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class TurnMeter:
    """Bytes parsed (client side) and scanned (upstream side) per event-loop turn."""

    def __init__(self, gw: Gw, monkeypatch: pytest.MonkeyPatch):
        self.loop = gw.running.loop  # type: ignore[attr-defined]
        self.parsed = self.scanned = 0
        self.max_parsed = self.max_scanned = 0
        self.turns = 0
        self.on = threading.Event()
        parse, scan = rconn.parse_command, wire.reply_scan

        def parse_command(buf, pos, *args):
            argv, end = parse(buf, pos, *args)
            self.parsed += max(0, end - pos)
            return argv, end

        def reply_scan(buf, pos, remaining):
            out = scan(buf, pos, remaining)
            self.scanned += max(0, out[0] - pos)
            return out

        monkeypatch.setattr(rconn, "parse_command", parse_command)
        monkeypatch.setattr(rup.wire, "reply_scan", reply_scan)

    def _probe(self) -> None:
        self.turns += 1
        self.max_parsed = max(self.max_parsed, self.parsed)
        self.max_scanned = max(self.max_scanned, self.scanned)
        self.parsed = self.scanned = 0
        if self.on.is_set():
            self.loop.call_soon(self._probe)

    def start(self) -> None:
        self.on.set()
        self.loop.call_soon_threadsafe(self._probe)

    def stop(self) -> None:
        self.on.clear()


def _auth(gw: Gw, tenant) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
    s.sendall(_resp(b"AUTH", tenant.slug.encode(), tenant.password.encode()))
    assert s.recv(100) == b"+OK\r\n"
    return s


def _read_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        assert chunk, f"closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def test_huge_valid_work_is_done_a_bounded_slice_per_turn_and_others_are_served(monkeypatch):
    with gateway(new_tenants(2)) as gw:
        a = gw.client(gw.a, socket_timeout=120)
        for start in range(0, BIG, 100_000):
            a.rpush("big", *(b"e%07d" % i for i in range(start, start + 100_000)))
        a.mset({f"k{i}": f"v{i}" for i in range(MGET_KEYS)})
        canary = gw.client(gw.b, socket_timeout=30)
        assert canary.ping()  # logged in (and its upstream connected) before the flood
        meter = TurnMeter(gw, monkeypatch)

        big_reply = b"*%d\r\n" % BIG + b"".join(b"$8\r\ne%07d\r\n" % i for i in range(BIG))
        keys = [b"k%d" % i for i in range(MGET_KEYS)]
        mget = _resp(b"MGET", *keys)
        mget_reply = b"*%d\r\n" % MGET_KEYS + b"".join(
            b"$%d\r\n%s\r\n" % (len(v), v) for v in (b"v%d" % i for i in range(MGET_KEYS))
        )
        sets = b"".join(_resp(b"SET", b"s%d" % i, b"x" * 16) for i in range(10_000))
        failures: list[BaseException] = []

        def big_lranges() -> None:
            try:
                s = _auth(gw, gw.a)
                for _ in range(3):
                    s.sendall(_resp(b"LRANGE", b"big", b"0", b"-1"))
                    assert _read_exactly(s, len(big_reply)) == big_reply
                s.close()
            except BaseException as exc:
                failures.append(exc)

        def mget_pipeline() -> None:
            try:
                s = _auth(gw, gw.a)
                for _ in range(4):
                    s.sendall(mget * 5 + sets)
                    assert _read_exactly(s, 5 * len(mget_reply)) == mget_reply * 5
                    assert _read_exactly(s, 5 * 10_000) == b"+OK\r\n" * 10_000
                s.close()
            except BaseException as exc:
                failures.append(exc)

        meter.start()
        workers = [threading.Thread(target=big_lranges), threading.Thread(target=mget_pipeline)]
        for w in workers:
            w.start()
        latencies = []
        while any(w.is_alive() for w in workers):
            t = time.perf_counter()
            assert canary.ping()
            latencies.append((time.perf_counter() - t) * 1000)
            time.sleep(0.005)
        for w in workers:
            w.join()
        meter.stop()
        assert not failures, failures[0]
        # The bounds (connection.BYTES_PER_TURN, upstream.BYTES_PER_TURN), with slack for
        # the canary's own bytes and a window that takes the next chunk whole.
        assert meter.turns > 100
        assert meter.max_scanned <= 4 * rup.BYTES_PER_TURN, meter.max_scanned
        assert meter.max_parsed <= 4 * rconn.BYTES_PER_TURN, meter.max_parsed
        latencies.sort()
        assert len(latencies) >= 10, latencies
        # Another tenant is answered while that goes on (the loop turns in milliseconds;
        # generous for a loaded test machine).
        assert latencies[len(latencies) // 2] < 50, latencies
        assert latencies[-1] < 1000, latencies
        a.delete("big")
        a.close()
        canary.close()


def test_a_tenant_with_many_busy_connections_gets_a_bounded_share_of_each_turn(monkeypatch):
    # 16 connections of one tenant, each pipelining 10,000-key MGETs: per connection alone,
    # every turn parsed 16 x 16-32 kB (420 kB); the tenant's connections now go on with
    # their kept input SLICES_PER_TENANT at a time.
    with gateway(new_tenants(2)) as gw:
        meter = TurnMeter(gw, monkeypatch)
        mget = _resp(b"MGET", *(b"nokey%d" % i for i in range(MGET_KEYS)))
        reply = b"*%d\r\n" % MGET_KEYS + b"$-1\r\n" * MGET_KEYS
        socks = [_auth(gw, gw.a) for _ in range(16)]
        failures: list[BaseException] = []

        def run(s: socket.socket) -> None:
            try:
                for _ in range(3):
                    s.sendall(mget * 3)
                    assert _read_exactly(s, 3 * len(reply)) == reply * 3
                s.close()
            except BaseException as exc:
                failures.append(exc)

        meter.start()
        workers = [threading.Thread(target=run, args=(s,)) for s in socks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        meter.stop()
        assert not failures, failures[0]
        assert meter.max_parsed <= 12 * rconn.BYTES_PER_TURN, meter.max_parsed
        assert not rconn._TURNS  # nothing left waiting


def test_a_never_read_pile_of_big_replies_is_bounded_by_backpressure():
    # Pipelined 10,000-element LRANGEs (140 kB each) whose replies are never read: what the
    # gateway holds for the client is bounded by max_inflight replies (then it stops reading
    # the client), not by what the client sent.
    with gateway(new_tenants(2), extra="[limits]\nmax_inflight = 16\n") as gw:
        a = gw.client(gw.a, socket_timeout=60)
        a.rpush("mid", *(b"m%07d" % i for i in range(10_000)))
        one = 10_000 * len(b"$8\r\nm0000000\r\n") + len(b"*10000\r\n")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        s.settimeout(10)
        s.sendall(_resp(b"AUTH", gw.a.slug.encode(), gw.a.password.encode()))
        assert s.recv(100) == b"+OK\r\n"
        s.setblocking(False)
        lrange = _resp(b"LRANGE", b"mid", b"0", b"-1") * 2_000
        sent, stuck_since = 0, None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent += s.send(lrange[sent % len(lrange) :])
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 1.0:
                    break
            time.sleep(0.01)
        assert stuck_since is not None, f"the gateway read all {sent} bytes"
        door = next(d for d in gw.running.gateway.frontdoors if d.protocol == "redis")  # type: ignore[attr-defined]
        held = [c for c in door.clients if c.transport is not None and c.sent - c.recv >= 0]
        buffered = max(c.transport.get_write_buffer_size() for c in held)
        owed = max(c.sent - c.recv for c in held)
        assert owed <= 16 + 1, owed
        assert buffered <= 18 * one, (buffered, one)
        assert ping_ok(gw)
        s.close()
        a.delete("mid")
        a.close()


def ping_ok(gw: Gw) -> bool:
    b = gw.client(gw.b, socket_timeout=5)
    try:
        return bool(b.ping())
    finally:
        b.close()
