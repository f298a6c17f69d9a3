"""Socket-level fuzzer of the Redis front door (issue 16): generated and mutated RESP frames.

    python bench/fuzz_redis.py                          # 20,000 frames or 300 s
    python bench/fuzz_redis.py --frames 1000000 --seconds 3600 --seed 7

Starts a gateway in this process in front of the workspace's Redis, with two tenants: the
attacker and a canary. Each fuzz connection starts unauthenticated or logs in (AUTH, or
HELLO 3 AUTH), then sends a few batches of frames: valid commands (with wrong-typed, too
many or too few arguments), inline commands, array and bulk headers with huge, negative,
non-digit and ``_``-containing lengths, truncated frames, nested arrays and other RESP
types where a bulk string belongs, binary junk, AUTH/HELLO/RESET variants before and after
authentication, MULTI/EXEC/WATCH/SUBSCRIBE state changes, and byte-level mutations of all
of these. Meanwhile the canary, another tenant's redis-py client, SETs and GETs its own
values in a loop and checks them.

Counted:
* frames tried;
* crashes: ERROR records of the ``ogelkit``/``asyncio`` loggers and every call of the
  gateway loop's exception handler ("Task exception was never retrieved", an exception in
  ``data_received``), counted where they are raised, not by reading a log;
* hangs: a batch that is complete by the fuzzer's own reading of RESP, followed by a
  command whose reply names a nonce, that got neither that reply nor a close within
  ``--hang`` seconds; and an unauthenticated connection left with a partial request that
  the gateway did not close within its handshake timeout (+2 s);
* canary failures (an error, a wrong value, a key it never wrote) and the canary's p99;
* leaks: a reply to the attacker holding the canary's secret; upstream connections of
  the attacker's ACL user still open after every fuzz connection closed beyond what its
  pools keep (shared + idle dedicated);
* the process's RSS at the end and its peak (the gateway runs in it).

Exit status 1 when any crash, hang, canary failure or leak was seen. ``run()`` is what the
CI-sized test (``ogelkit/plugins/redis/tests/test_fuzz.py``) calls.
"""

from __future__ import annotations

import argparse
import logging
import random
import secrets
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

HANDSHAKE_TIMEOUT = 2.0
PREAUTH_MAX_BULK = 16 * 1024  # the door's limits before and after AUTH (connection.py)
PREAUTH_MAX_ARGS = 16
MAX_BULK = 1024 * 1024  # max_bulk_size of the fuzzed backend
MAX_ARGS = 1024 * 1024
MAX_INLINE = 64 * 1024
#: Commands that may legitimately wait for a long time (or forever) for their reply.
BLOCKING = {b"blpop", b"brpop", b"brpoplpush", b"blmove", b"blmpop", b"bzpopmin", b"bzpopmax",
            b"bzmpop", b"xread", b"xreadgroup", b"wait", b"waitaof", b"monitor", b"sync",
            b"psync", b"client", b"debug"}
#: Commands after which the door's limits (pre- or post-auth) are not known to the fuzzer.
STATEFUL = {b"auth", b"hello", b"reset"}


@dataclass
class Figures:
    frames: int = 0
    connections: int = 0
    batches: int = 0
    answered: int = 0
    closed_by_gateway: int = 0
    crashes: int = 0
    hangs: int = 0
    preauth_timeouts_checked: int = 0
    canary_failures: int = 0
    canary_ops: int = 0
    canary_latencies_ms: list[float] = field(default_factory=list)
    leaks: int = 0
    upstream_leaked: int = 0
    upstream_at_end: dict[str, int] = field(default_factory=dict)
    rss_end_mb: float = 0.0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    crash_samples: list[str] = field(default_factory=list)
    #: What the attacker sent last (it runs one connection at a time): a crash's sample
    #: names it, so that the sample is a reproduction.
    last_sent: bytes = b""
    hang_samples: list[str] = field(default_factory=list)
    canary_samples: list[str] = field(default_factory=list)

    @property
    def canary_p99_ms(self) -> float:
        return percentile(self.canary_latencies_ms, 99)

    def line(self) -> str:
        worst = max(self.canary_latencies_ms, default=0.0)
        return (f"frames tried {self.frames:,} in {self.connections:,} connections "
                f"({self.batches:,} batches: {self.answered:,} answered, "
                f"{self.closed_by_gateway:,} closed by the gateway), {self.seconds:.1f}s: "
                f"crashes {self.crashes}, "
                f"hangs {self.hangs} (+{self.preauth_timeouts_checked:,} unauthenticated "
                f"partial connections closed in time), canary failures "
                f"{self.canary_failures} ({self.canary_ops:,} ops, p99 "
                f"{self.canary_p99_ms:.1f} ms, worst {worst:.0f} ms), leaks {self.leaks}, "
                f"upstream connections leaked {self.upstream_leaked}; RSS at the end "
                f"{self.rss_end_mb:.0f} MB, peak {self.peak_rss_mb:.0f} MB")

    def failed(self) -> bool:
        return bool(self.crashes or self.hangs or self.canary_failures or self.leaks
                    or self.upstream_leaked)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def rss_mb() -> tuple[float, float]:
    """(current, peak) RSS of this process in MB."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os
    current = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, max(peak, current)


class _Errors(logging.Handler):
    """Counts ERROR records of the gateway's and asyncio's loggers."""

    def __init__(self, figures: Figures):
        super().__init__(logging.ERROR)
        self.figures = figures

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("ogelkit", "asyncio")):
            self.figures.crashes += 1
            if len(self.figures.crash_samples) < 5:
                self.figures.crash_samples.append(
                    f"{record.name}: {record.getMessage()[:300]} {record.exc_info or ''} "
                    f"after {self.figures.last_sent[-600:]!r}")


# -- frames ------------------------------------------------------------------------------------

def enc(*args: bytes | str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Generator:
    """Frames for the attacker: ``frame()`` is one request (valid, broken or mutated)."""

    def __init__(self, rng: random.Random, attacker: tuple[str, str], canary: tuple[str, str],
                 canary_prefix: str):
        self.rng = rng
        self.user, self.password = attacker
        self.canary_user, self.canary_password = canary
        self.canary_prefix = canary_prefix
        self.keys = ["k1", "k2", "{k}3", "h", "l", "z", "s", "x" * 300, "",
                     canary_prefix + "c0", "t:", "*", "\x00\xff"]
        self.corpus = self._corpus()

    def key(self) -> str:
        return self.rng.choice(self.keys)

    def _corpus(self) -> list[tuple[bytes | str, ...]]:
        u, p = self.user, self.password
        return [
            ("PING",), ("PING", "x"), ("ECHO", "hi"), ("SET", "k1", "v"), ("GET", "k1"),
            ("SET", "k1", "v", "EX", "100"), ("SET", "k1", "v", "PX", "abc"),
            ("SET", "k1"), ("GET",), ("GET", "k1", "k2"), ("INCR", "k1"), ("INCRBY", "k2", "x"),
            ("MSET", "k1", "1", "k2"), ("MGET", "k1", "k2", "{k}3"), ("DEL", "k1", "k2"),
            ("LPUSH", "l", "a", "b"), ("LRANGE", "l", "0", "-1"), ("LRANGE", "l", "a", "b"),
            ("HSET", "h", "f", "v", "g"), ("HGETALL", "h"), ("ZADD", "z", "nan", "m"),
            ("ZADD", "z", "1", "m"), ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
            ("SADD", "s", "a"), ("SINTERSTORE", "s", "s", "h"), ("EXPIRE", "k1", "-5"),
            ("KEYS", "*"), ("SCAN", "0", "MATCH", "*", "COUNT", "10"), ("SCAN", "x"),
            ("DBSIZE",), ("TYPE", "h"), ("RENAME", "k1", "k2"), ("COPY", "k1", "k2", "DB", "3"),
            ("OBJECT", "ENCODING", "k1"), ("SORT", "l", "BY", "nosort", "GET", "#"),
            ("EVAL", "return redis.call('GET', KEYS[1])", "1", "k1"),
            ("EVAL", "return 1", "-1"), ("EVAL", "return redis.call('GET', 't:x')", "0"),
            ("FCALL", "f", "0"), ("EVALSHA", "0" * 40, "0"), ("SCRIPT", "FLUSH"),
            ("PUBLISH", "ch", "m"), ("SUBSCRIBE", "ch"), ("PSUBSCRIBE", "c*"),
            ("SSUBSCRIBE", "sch"), ("UNSUBSCRIBE",), ("PUNSUBSCRIBE", "c*"), ("SUNSUBSCRIBE",),
            ("PUBSUB", "CHANNELS"), ("MULTI",), ("EXEC",), ("DISCARD",), ("WATCH", "k1"),
            ("WATCH",), ("UNWATCH",), ("BLPOP", "l", "0.01"), ("BRPOP", "k9", "0.01"),
            ("BLMOVE", "l", "l2", "LEFT", "RIGHT", "0.01"), ("XADD", "st", "*", "f", "v"),
            ("XREAD", "COUNT", "1", "STREAMS", "st", "0"), ("SELECT", "1"), ("SELECT", "0"),
            ("SWAPDB", "0", "1"), ("FLUSHALL",), ("FLUSHDB", "ASYNC"), ("CONFIG", "GET", "*"),
            ("INFO",), ("INFO", "keyspace"), ("CLIENT", "ID"), ("CLIENT", "SETNAME", "fz"),
            ("CLIENT", "GETNAME"), ("CLIENT", "LIST"), ("CLIENT", "INFO"),
            ("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "ON"),
            ("CLIENT", "SETINFO", "LIB-NAME", "fz"), ("CLIENT", "NO-EVICT", "on"),
            ("CLIENT", "KILL", "ID", "1"), ("CLIENT", "TRACKING", "on"), ("COMMAND", "COUNT"),
            ("COMMAND", "INFO", "get"), ("COMMAND", "GETKEYS", "SET", "a", "b"),
            ("ACL", "WHOAMI"), ("ACL", "SETUSER", "x"), ("MEMORY", "USAGE", "k1"),
            ("RANDOMKEY",), ("TIME",), ("LASTSAVE",), ("ROLE",), ("NOSUCHCOMMAND", "a"),
            ("AUTH", u, p), ("AUTH", u, "wrong"), ("AUTH", p), ("AUTH", u, p, "x"), ("AUTH",),
            ("AUTH", self.canary_user, p), ("AUTH", self.canary_user, "guess"),
            ("AUTH", f"{u}.main", p), ("AUTH", f"{u}.nope", p), ("AUTH", b"\xff\xfe", b"\x80"),
            ("HELLO",), ("HELLO", "2"), ("HELLO", "3"), ("HELLO", "4"), ("HELLO", "x"),
            ("HELLO", "3", "AUTH", u, p), ("HELLO", "2", "AUTH", u, p),
            ("HELLO", "3", "AUTH", u), ("HELLO", "3", "AUTH", self.canary_user, "guess"),
            ("HELLO", "3", "SETNAME", "a b"), ("HELLO", "3", "SETNAME", "fz", "AUTH", u, p),
            ("HELLO", "-1"), ("HELLO", "99999999999999999999999"), ("RESET",),
            ("GET", self.canary_prefix + "c0"), ("SET", self.canary_prefix + "c0", "pwned"),
            ("KEYS", self.canary_prefix + "*"),
        ]

    def valid(self) -> bytes:
        rng = self.rng
        args = list(rng.choice(self.corpus))
        if rng.random() < 0.3:  # another key, or an extra/missing argument
            i = rng.randrange(len(args))
            r = rng.random()
            if r < 0.4 and i:
                args[i] = self.key()
            elif r < 0.7:
                args.append(rng.choice(["", "1", "-1", "x", "\r\n", "9" * 30, self.key()]))
            elif len(args) > 1:
                del args[i if i else 1]
        if rng.random() < 0.15:
            args[0] = args[0].lower() if isinstance(args[0], str) else args[0]
        return enc(*args)

    def inline(self) -> bytes:
        rng = self.rng
        args = rng.choice(self.corpus)
        words = []
        for a in args:
            s = a if isinstance(a, str) else a.decode("latin-1")
            r = rng.random()
            if r < 0.1:
                s = '"' + s.replace('"', '\\"') + '"'
            elif r < 0.15:
                s = "'" + s + "'"
            elif r < 0.2:
                s = rng.choice(['"unbalanced', "'x", '"a"b', '"\\x4', '"\\xZZ"', '""', "''"])
            words.append(s)
        line = " ".join(w for w in words if w).encode("latin-1")
        return line + rng.choice([b"\r\n", b"\n", b"\r\r\n", b" \t\n"])

    def header(self) -> bytes:
        rng = self.rng
        weird = rng.choice([
            b"2147483647", b"1048577", b"1048576", b"99999999999999999999", b"-1", b"-5",
            b"-0", b"0", b"abc", b"1_0", b"_1", b"+3", b" 3", b"3 ", b"0x10", b"", b"3.0",
            b"0003", b"100000", b"4_000", b"-", b"\x00", b"1e3", b"17", b"16"])
        body = enc("SET", "k1", "v")
        r = rng.random()
        if r < 0.4:  # a weird array header, then what a valid request would have
            return b"*" + weird + b"\r\n" + body[4:]
        if r < 0.8:  # a weird bulk header in a valid request
            return b"*2\r\n$" + weird + b"\r\nGET\r\n$2\r\nk1\r\n"
        return b"*" + weird + b"\r\n"

    def structure(self) -> bytes:
        rng = self.rng
        return rng.choice([
            b"*2\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n",  # nested array
            b"*1\r\n*1\r\n*1\r\n*0\r\n",
            b"*2\r\n$3\r\nGET\r\n+k1\r\n",  # other RESP types where a bulk string belongs
            b"*2\r\n$3\r\nGET\r\n:1\r\n", b"*1\r\n:7\r\n", b"*1\r\n_\r\n", b"*1\r\n$-1\r\n",
            b"*2\r\n$3\r\nGET\r\n#t\r\n", b"*2\r\n$3\r\nGET\r\n,1.5\r\n",
            b"*1\r\n%1\r\n+a\r\n+b\r\n", b"*1\r\n~1\r\n+a\r\n", b"*1\r\n>1\r\n+a\r\n",
            b"*2\r\n$3\r\nGET\r\n!3\r\nerr\r\n", b"*2\r\n$3\r\nGET\r\n=5\r\ntxt:a\r\n",
            b"*1\r\n|1\r\n+a\r\n+b\r\n+c\r\n", b"*2\r\n$3\r\nGET\r\n(12345678901234567890\r\n",
            b"*1\r\n$4\r\nPING\r\n\r\n", b"*1\r\n$4\r\nPINGxx", b"*1\r\n$4\r\nPI\r\n\r\n",
            b"$4\r\nPING\r\n", b"+PING\r\n", b"-ERR\r\n", b":1\r\n", b"\r\n", b"\n", b"\r",
            b"*\r\n", b"$\r\n", b"*1\r\n$\r\n\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n",
            b"*1\r\n$%d\r\n" % (PREAUTH_MAX_BULK + 1) + b"x" * (PREAUTH_MAX_BULK + 1) + b"\r\n",
            b"*%d\r\n" % (PREAUTH_MAX_ARGS + 1) + b"$1\r\nx\r\n" * (PREAUTH_MAX_ARGS + 1),
            b"*3\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n$70000\r\n" + b"y" * 70000 + b"\r\n",
            b"x" * (MAX_INLINE + 10) + b"\r\n", b"PING " + b"a" * 2000 + b"\n",
        ])

    def junk(self) -> bytes:
        rng = self.rng
        data = rng.randbytes(rng.randrange(1, 64))
        if rng.random() < 0.5:
            data = bytes(rng.choice(b"*$+-:_\r\n0123456789-abc\x00") for _ in range(len(data)))
        return data

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if not buf:
                buf = bytearray(self.junk())
            op = rng.randrange(8)
            i = rng.randrange(len(buf))
            if op == 0:  # bit flip
                buf[i] ^= 1 << rng.randrange(8)
            elif op == 1:  # truncate
                del buf[i:]
            elif op == 2:  # a digit changed
                digits = [j for j, c in enumerate(buf) if 48 <= c <= 57]
                if digits:
                    buf[rng.choice(digits)] = rng.choice(b"0123456789_-+ x")
            elif op == 3:  # a CRLF inserted or removed
                if rng.random() < 0.5:
                    buf[i:i] = b"\r\n"
                else:
                    j = buf.find(b"\r\n")
                    if j >= 0:
                        del buf[j:j + rng.choice((1, 2))]
            elif op == 4:  # bytes deleted
                del buf[i:i + rng.randint(1, 4)]
            elif op == 5:  # junk inserted
                buf[i:i] = self.junk()[:8]
            elif op == 6:  # a type byte changed
                marks = [j for j, c in enumerate(buf) if c in b"*$"]
                if marks:
                    buf[rng.choice(marks)] = rng.choice(b"*$+-:_#,%~>=!|(")
            else:  # duplicated piece
                j = rng.randrange(i, len(buf) + 1)
                buf[j:j] = buf[i:j]
        return bytes(buf)

    def frame(self, dirty: bool = True) -> bytes:
        """One request; a clean one (valid or inline) unless ``dirty``, so that half the
        batches get past their first frames instead of ending at a protocol error."""
        rng = self.rng
        r = rng.random() if dirty else rng.random() * 0.55
        if r < 0.40:
            data = self.valid()
        elif r < 0.55:
            data = self.inline()
        elif r < 0.67:
            data = self.header()
        elif r < 0.77:
            data = self.structure()
        elif r < 0.82:
            data = self.junk()
        else:
            data = self.mutate(rng.choice([self.valid, self.inline, self.structure])())
        return data


# -- the fuzzer's own reading of a request stream -----------------------------------------------

def scan(stream: bytes, max_bulk: int, max_args: int) -> tuple[str, list[list[bytes]]]:
    """Read ``stream`` as the door must: ``("complete", commands)`` when it is whole
    requests, ``("partial", commands)`` when the last one lacks bytes (the door rightly waits),
    ``("error", commands)`` when a request is malformed (the door answers and closes). The
    commands are those before the end, the cut or the error (inline ones split naively, quotes
    stripped from each word)."""
    pos, n = 0, len(stream)
    cmds: list[list[bytes]] = []
    while pos < n:
        if stream[pos] != 42:  # inline
            eol = stream.find(b"\n", pos)
            if eol < 0:
                return ("error" if n - pos > MAX_INLINE else "partial"), cmds
            if eol - pos > MAX_INLINE:
                return "error", cmds
            # Quotes off each word: '"BLMOVE" l l2 LEFT RIGHT 0.' blocks as BLMOVE does.
            words = [w.strip(b"\"'") for w in stream[pos:eol].split()]
            if words:
                cmds.append(words)
            pos = eol + 1
            continue
        eol = stream.find(b"\r\n", pos)
        if eol < 0:
            return ("error" if n - pos > MAX_INLINE else "partial"), cmds
        head = stream[pos + 1:eol]
        pos = eol + 2
        if head[:1] == b"-" and head[1:].isdigit() and len(head) <= 18:
            continue  # a negative count: an empty request
        if not head.isdigit() or len(head) > 18 or int(head) > max_args:
            return "error", cmds
        argv = []
        for _ in range(int(head)):
            if pos >= n:
                return "partial", cmds
            if stream[pos] != 36:
                return "error", cmds
            eol = stream.find(b"\r\n", pos)
            if eol < 0:
                return ("error" if n - pos > 32 else "partial"), cmds
            size = stream[pos + 1:eol]
            if not size.isdigit() or len(size) > 18 or int(size) > max_bulk:
                return "error", cmds
            start = eol + 2
            end = start + int(size)
            if end + 2 > n:
                return "partial", cmds
            argv.append(stream[start:end])
            pos = end + 2  # (the two bytes after a value are not checked, like Redis)
        if argv:
            cmds.append(argv)
    return "complete", cmds


def judge(stream: bytes, authed: bool | None) -> tuple[str, bool]:
    """``(verdict, blocking)``: "answer" (the door must answer the tail or close), "wait"
    (a partial request: it may wait), and whether a command may block the reply for long.
    ``authed`` None: not known (an earlier batch had AUTH, HELLO or RESET)."""
    strict = scan(stream, MAX_BULK, MAX_ARGS) if authed else scan(
        stream, PREAUTH_MAX_BULK, PREAUTH_MAX_ARGS)
    readings = [strict]
    if (authed is None or any(c and c[0].lower() in STATEFUL for c in strict[1])
            or strict[0] != "complete"):
        # After AUTH/HELLO/RESET the limits may be the other ones: both readings count.
        readings.append(scan(stream, PREAUTH_MAX_BULK, PREAUTH_MAX_ARGS) if authed
                        else scan(stream, MAX_BULK, MAX_ARGS))
    blocking = any(c and c[0].lower() in BLOCKING for r in readings for c in r[1])
    if any(r[0] == "partial" for r in readings):
        return "wait", blocking
    return "answer", blocking


# -- connections -------------------------------------------------------------------------------

class Attacker:
    def __init__(self, port: int, gen: Generator, figures: Figures, hang: float,
                 canary_secret: bytes, batch: int):
        self.port = port
        self.gen = gen
        self.rng = gen.rng
        self.figures = figures
        self.hang = hang
        self.secret = canary_secret
        self.batch = batch
        self.nonce = 0
        self.received = b""  # the last bytes _read_until read (for a hang's sample)
        #: Unauthenticated sockets left with a partial request: (socket, deadline, sample).
        self.waiting: list[tuple[socket.socket, float, bytes]] = []

    def _read_until(self, sock: socket.socket, want: bytes) -> str:
        """"seen", "closed" or "hang"; checks every reply for the canary's secret."""
        deadline = time.monotonic() + self.hang
        tail = b""
        self.received = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "hang"
            sock.settimeout(left)
            try:
                chunk = sock.recv(262144)
            except TimeoutError:
                return "hang"
            except OSError:
                return "closed"
            if not chunk:
                return "closed"
            data = tail + chunk
            self.received = (self.received + chunk)[-600:]
            if self.secret in data:
                self.figures.leaks += 1
            if want in data:
                return "seen"
            tail = data[-max(len(want), len(self.secret)):]

    def login(self, sock: socket.socket) -> bool:
        g = self.gen
        if self.rng.random() < 0.3:
            sock.sendall(enc("HELLO", "3", "AUTH", g.user, g.password))
            want = b"proto"
        else:
            sock.sendall(enc("AUTH", g.user, g.password))
            want = b"+OK"
        return self._read_until(sock, want) == "seen"

    def connection(self) -> None:
        f = self.figures
        f.connections += 1
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.hang)
        keep = False
        try:
            f.last_sent = (f.last_sent + b" <new connection> ")[-4096:]
            authed: bool | None = self.rng.random() < 0.75 and self.login(sock)
            for _ in range(self.rng.randint(1, 4)):
                dirty = self.rng.random() < 0.5
                frames = [self.gen.frame(dirty) for _ in range(self.rng.randint(1, self.batch))]
                f.frames += len(frames)
                f.batches += 1
                stream = b"".join(frames)
                verdict, blocking = judge(stream, authed)
                f.last_sent = (f.last_sent + stream)[-4096:]
                if verdict == "wait":
                    sock.sendall(stream)
                    if authed is False and not any(
                            c and c[0].lower() in STATEFUL
                            for r in (scan(stream, MAX_BULK, MAX_ARGS),) for c in r[1]):
                        # The handshake timeout must close it: checked later.
                        self.waiting.append((sock, time.monotonic() + HANDSHAKE_TIMEOUT + 2,
                                             stream[:120]))
                        keep = True
                    return
                self.nonce += 1
                marker = b"fuzzend%d" % self.nonce
                # REPLY ON undoes a CLIENT REPLY OFF/SKIP of the batch; an unknown command's
                # error names the marker (in MULTI and subscribed too), and before AUTH so
                # does HELLO's error about an unknown option.
                # DISCARD first: a CLIENT REPLY ON inside a MULTI would only be queued (a
                # real Redis never answers the marker then either).
                tail = (enc("DISCARD") + enc("CLIENT", "REPLY", "ON") + enc(marker)
                        + enc("HELLO", "2", marker))
                try:
                    sock.sendall(stream + tail)
                except OSError:
                    f.closed_by_gateway += 1
                    return
                got = self._read_until(sock, marker)
                if got == "closed":
                    f.closed_by_gateway += 1
                    return
                if got == "hang":
                    if not blocking:
                        f.hangs += 1
                        if len(f.hang_samples) < 5:
                            f.hang_samples.append(f"authed={authed} {stream[:300]!r} "
                                                  f"(this connection: {f.last_sent[-1500:]!r}; "
                                                  f"received: {self.received!r})")
                    return
                f.answered += 1
                if any(c and c[0].lower() in STATEFUL for c in scan(stream, MAX_BULK,
                                                                    MAX_ARGS)[1]):
                    authed = None  # not known any more: both readings count
                    if self.rng.random() < 0.5:
                        return
        except OSError:
            f.closed_by_gateway += 1
        finally:
            if not keep:
                sock.close()

    def check_waiting(self, block: bool = False) -> None:
        """Every unauthenticated partial connection must be closed by its deadline."""
        now = time.monotonic()
        still = []
        for sock, deadline, sample in self.waiting:
            if block:
                wait = max(0.0, deadline - now)
                ready, _, _ = select.select([sock], [], [], wait)
                now = time.monotonic()
            else:
                ready, _, _ = select.select([sock], [], [], 0)
            closed = False
            if ready:
                try:
                    while True:
                        sock.setblocking(False)
                        chunk = sock.recv(65536)
                        if not chunk:
                            closed = True
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if closed:
                self.figures.preauth_timeouts_checked += 1
                sock.close()
            elif now >= deadline:
                self.figures.hangs += 1
                if len(self.figures.hang_samples) < 5:
                    self.figures.hang_samples.append(f"not closed before AUTH: {sample!r}")
                sock.close()
            else:
                still.append((sock, deadline, sample))
        self.waiting = still


class Canary(threading.Thread):
    """Another tenant's redis-py client: SET and GET of its own values, checked."""

    def __init__(self, port: int, user: str, password: str, secret: bytes, figures: Figures):
        super().__init__(daemon=True)
        self.port, self.user, self.password = port, user, password
        self.secret = secret
        self.figures = figures
        self.stop = threading.Event()

    def fail(self, what: str) -> None:
        self.figures.canary_failures += 1
        if len(self.figures.canary_samples) < 5:
            self.figures.canary_samples.append(what[:300])

    def run(self) -> None:
        import redis
        f = self.figures
        client = redis.Redis(host="127.0.0.1", port=self.port, username=self.user,
                             password=self.password, socket_timeout=10)
        written: dict[bytes, bytes] = {}
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                key = b"c%d" % (i % 50)
                value = b"%s:%d" % (self.secret, i)
                t0 = time.monotonic()
                try:
                    client.set(key, value)
                    got = client.get(key)
                    if i % 20 == 0:  # its keyspace is exactly what it wrote
                        keys = set(client.keys("*"))
                        if keys != set(written) | {key}:
                            self.fail(f"keys {sorted(keys)[:5]} vs written {len(written)}")
                        for k, v in zip(written, client.mget(list(written)), strict=True):
                            if v != written[k] and k != key:
                                self.fail(f"{k!r} = {v!r}, wrote {written[k]!r}")
                except Exception as exc:
                    self.fail(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.1)
                    continue
                f.canary_latencies_ms.append((time.monotonic() - t0) * 1000)
                f.canary_ops += 1
                if got != value:
                    self.fail(f"GET {key!r} = {got!r}, wrote {value!r}")
                written[key] = value
                time.sleep(0.005)
        finally:
            client.close()


# -- the run -----------------------------------------------------------------------------------

def _config(url: str, tenants: list[tuple[str, str]]) -> str:
    from ogelkit.testing import test_secret_key
    seeds = "".join(f'\n[tenants.{slug}]\ntier = "pro"\npassword = "{pw}"\n'
                    f'databases.main.backend = "r"\n' for slug, pw in tenants)
    return (f'[listen]\nhost = "127.0.0.1"\nhttp = 0\nredis = 0\n\n'
            f'[gateway]\ndrain_timeout = "2s"\n\n'
            f'[control]\nurl = "sqlite:///:memory:"\nsecret_key = "{test_secret_key()}"\n\n'
            f'[backends.r]\ntype = "redis"\nurl = "{url}"\nmax_bulk_size = "1MB"\n'
            f'handshake_timeout = "{HANDSHAKE_TIMEOUT:g}s"\n{seeds}')


def _upstream_clients(admin: Any, acl_user: str) -> int:
    return sum(1 for c in admin.client_list() if c.get("user") == acl_user)


def run(frames: int = 20_000, seconds: float = 300.0, seed: int = 1, batch: int = 8,
        hang: float = 5.0) -> Figures:
    import redis

    from ogelkit.testing import gateway_thread
    from ogelkit.testing.services import redis_url

    url = redis_url()
    rng = random.Random(seed)
    sfx = secrets.token_hex(3)
    attacker, canary = (f"fza{sfx}", f"pw-a-{sfx}"), (f"fzc{sfx}", f"pw-c-{sfx}")
    canary_prefix = f"t:{canary[0]}:main:"
    secret = b"canary-secret-" + secrets.token_hex(6).encode()
    figures = Figures()
    handler = _Errors(figures)
    watched = [logging.getLogger("ogelkit"), logging.getLogger("asyncio")]
    for logger in watched:  # on the loggers themselves: the gateway may stop propagation
        logger.addHandler(handler)

    def on_loop_error(loop: Any, context: dict[str, Any]) -> None:
        figures.crashes += 1
        if len(figures.crash_samples) < 5:
            figures.crash_samples.append(
                f"loop: {context.get('message')} {context.get('exception')!r}"[:300]
                + f" after {figures.last_sent[-600:]!r}")

    admin = redis.Redis.from_url(url)
    started = time.monotonic()
    try:
        with gateway_thread(_config(url, [attacker, canary])) as gw:
            assert gw.loop is not None
            gw.loop.call_soon_threadsafe(gw.loop.set_exception_handler, on_loop_error)
            for name, logger in logging.Logger.manager.loggerDict.items():
                if name.startswith(("ogelkit", "asyncio")) and isinstance(logger, logging.Logger):
                    logger.disabled = False  # a logging config applied earlier may have
            port = gw.port("redis")
            watcher = Canary(port, canary[0], canary[1], secret, figures)
            watcher.start()
            fuzzer = Attacker(port, Generator(rng, attacker, canary, canary_prefix), figures,
                              hang, secret, batch)
            try:
                while figures.frames < frames and time.monotonic() - started < seconds:
                    fuzzer.connection()
                    if len(fuzzer.waiting) > 100:
                        fuzzer.check_waiting(block=len(fuzzer.waiting) > 200)
                    else:
                        fuzzer.check_waiting()
                fuzzer.check_waiting(block=True)
            finally:
                watcher.stop.set()
                watcher.join(15)
            # Every fuzz connection is closed: what the attacker's pools still hold upstream.
            backend = gw.context.backends["r"]
            acl_user = backend.acl_user(attacker[0], "main")
            deadline = time.monotonic() + 10
            while True:
                tdb = backend.tdbs.get((attacker[0], "main"))
                stats = tdb.pools.stats() if tdb is not None else {
                    "shared": 0, "dedicated": 0, "idle_dedicated": 0}
                upstream = _upstream_clients(admin, acl_user)
                kept = stats["shared"] + stats["idle_dedicated"]
                leaked = max(upstream - kept, stats["dedicated"] - stats["idle_dedicated"])
                if leaked <= 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            figures.upstream_leaked = max(0, leaked)
            figures.upstream_at_end = {**stats, "upstream_clients": upstream}
            # The gateway survived: the canary's tenant can still log in and read.
            check = redis.Redis(host="127.0.0.1", port=port, username=canary[0],
                                password=canary[1], socket_timeout=10)
            try:
                if not check.ping():
                    figures.canary_failures += 1
            except Exception as exc:
                figures.canary_failures += 1
                figures.canary_samples.append(f"after the run: {exc!r}")
            finally:
                check.close()
            figures.rss_end_mb, figures.peak_rss_mb = rss_mb()
    finally:
        for logger in watched:
            logger.removeHandler(handler)
        try:
            for slug, _ in (attacker, canary):
                admin.acl_deluser(f"o7s:{slug}:main")
                keys = list(admin.scan_iter(match=f"t:{slug}:*", count=1000))
                for i in range(0, len(keys), 500):
                    admin.unlink(*keys[i:i + 500])
        finally:
            admin.close()
    figures.seconds = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="most frames per batch")
    ap.add_argument("--hang", type=float, default=5.0, help="seconds before a hang is counted")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run(args.frames, args.seconds, args.seed, args.batch, args.hang)
    print(figures.line())
    for sample in figures.crash_samples:
        print("  crash:", sample)
    for sample in figures.hang_samples:
        print("  hang:", sample)
    for sample in figures.canary_samples:
        print("  canary:", sample)
    print("  attacker's upstream at the end:", figures.upstream_at_end)
    return 1 if figures.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
