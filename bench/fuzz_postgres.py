"""Socket-level fuzzer of the Postgres front door (issue 16): random and mutated frames.

    python bench/fuzz_postgres.py                      # 20,000 frames or 120 s
    python bench/fuzz_postgres.py --frames 1000000 --seconds 3600 --seed 7
    python bench/fuzz_postgres.py --mode session

Starts a gateway in this process (transaction pooling by default, with the session and
timeout layers so that Execute is parsed too) on the workspace's PostgreSQL, with two
tenants: the attacker and a canary. Each fuzz connection either sends one mutated
startup-phase packet (before authentication), or logs in and sends a batch of frontend
messages taken from a corpus of valid ones and mutated (bit flips, truncation, wrong
lengths, random type bytes, spliced bodies). Meanwhile the canary, another tenant's
psycopg client, runs ``SELECT 1`` in a loop.

Counted:
* frames tried;
* crashes: ERROR records of the gateway's loggers (an unexpected exception, a task
  exception nobody retrieved, an exception in an asyncio callback);
* hangs: a connection whose input was complete (by the lengths it declared) but which got
  neither an answer nor a close within ``--hang`` seconds (a batch ends with a Query that
  must be answered, or with the gateway closing the connection);
* canary failures: any error of the canary, and its worst latency.

Exit status 1 when any crash, hang or canary failure was seen. ``run()`` is what the CI-sized
test (``ogelkit/plugins/postgres/tests/test_fuzz.py``) calls.
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

END = b"SELECT 'fuzz-end'"
RECENT = 8  # earlier connections' input kept for a hang sample


@dataclass
class Figures:
    frames: int = 0
    connections: int = 0
    crashes: int = 0
    hangs: int = 0
    canary_failures: int = 0
    canary_worst_ms: float = 0.0
    canary_queries: int = 0
    canary_latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    crash_samples: list[str] = field(default_factory=list)
    hang_samples: list[str] = field(default_factory=list)
    logins_refused: int = 0
    attacker_pool: dict[str, int] = field(default_factory=dict)
    refusal_samples: list[str] = field(default_factory=list)
    #: What the last logged-in fuzz connections sent (stream + tail), oldest first: in
    #: transaction mode a server connection goes from client to client, so a hang can be
    #: caused by what an earlier client left on it (the pool hands out the last one in).
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT))

    def line(self) -> str:
        return (f"frames tried {self.frames:,} in {self.connections:,} connections, "
                f"{self.seconds:.1f}s: crashes {self.crashes}, hangs {self.hangs}, canary "
                f"failures {self.canary_failures} ({self.canary_queries:,} queries, worst "
                f"{self.canary_worst_ms:.0f} ms, p99 {self.canary_p99_ms:.1f} ms); attacker "
                f"logins refused {self.logins_refused}; peak RSS {self.peak_rss_mb:.0f} MB")

    @property
    def canary_p99_ms(self) -> float:
        return percentile(self.canary_latencies_ms, 99)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def peak_rss_mb() -> float:
    """This process's peak RSS (the gateway runs in it, beside the fuzzer's own sockets)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Errors(logging.Handler):
    """Counts ERROR records of the gateway (and asyncio's 'never retrieved' reports)."""

    def __init__(self, figures: Figures):
        super().__init__(logging.ERROR)
        self.figures = figures

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "relay error: %r":
            return  # counted where it happens (PostgresConnection.crashed, below)
        if record.name.startswith(("ogelkit", "asyncio")):
            self.figures.crashes += 1
            if len(self.figures.crash_samples) < 5:
                self.figures.crash_samples.append(
                    f"{record.name}: {record.getMessage()[:200]} {record.exc_info or ''}")


# -- frames ------------------------------------------------------------------------------------

def _corpus(pg: Any) -> list[bytes]:
    h, i = pg._h.pack, pg._i.pack
    return [
        pg.query("SELECT 1"),
        pg.query("SELECT $1"),
        pg.query("BEGIN"), pg.query("COMMIT"), pg.query("LISTEN x"), pg.query("SET work_mem = '8MB'"),
        pg.message(b"P", b"\0SELECT 1\0" + h(0)),
        pg.message(b"P", b"s1\0SELECT $1::int\0" + h(1) + i(23)),
        pg.message(b"B", b"\0\0" + h(0) + h(0) + h(0)),
        pg.message(b"B", b"p1\0s1\0" + h(0) + h(1) + i(1) + b"7" + h(0)),
        pg.message(b"D", b"S\0"), pg.message(b"D", b"Ss1\0"), pg.message(b"D", b"P\0"),
        pg.message(b"E", b"\0" + i(0)), pg.message(b"E", b"p1\0" + i(1)),
        pg.message(b"C", b"Ss1\0"), pg.message(b"C", b"P\0"),
        pg.message(b"H"), pg.SYNC,
        pg.message(b"d", b"copy-data"), pg.message(b"c"), pg.message(b"f", b"failed\0"),
        pg.message(b"F", i(1) + h(0) + h(0) + h(0)),
    ]


def _mutate(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if op == 0 and data:  # bit flips
            k = rng.randrange(len(data))
            data[k] ^= 1 << rng.randrange(8)
        elif op == 1 and len(data) > 1:  # truncate the body, keep the declared length
            del data[rng.randrange(1, len(data)):]
        elif op == 2 and len(data) >= 5:  # a wrong length
            length = rng.choice([0, 1, 3, 4, 5, len(data) - 2, len(data) + 3,
                                 rng.randrange(2**31), 2**31 - 1, 2**32 - 1])
            data[1:5] = max(0, length).to_bytes(4, "big")
        elif op == 3 and data:  # a random type byte
            data[0] = rng.randrange(256)
        elif op == 4:  # remove every NUL
            data = bytearray(data.replace(b"\0", b"x"))
            if len(data) >= 5:
                data[1:5] = (len(data) - 1).to_bytes(4, "big")
        elif op == 5:  # splice another frame's body in
            other = rng.choice(corpus)
            data = bytearray(data[:5] + other[5:])
            data[1:5] = (len(data) - 1).to_bytes(4, "big")
        elif op == 6:  # random bytes
            data = bytearray(rng.randbytes(rng.randrange(1, 40)))
        else:  # a random body with a correct length
            body = rng.randbytes(rng.randrange(0, 30))
            data = bytearray(data[:1] + (len(body) + 4).to_bytes(4, "big") + body)
    return bytes(data)


def _complete(stream: bytes, max_msg: int) -> bool | None:
    """Walk ``stream`` as the gateway frames it: True when every message is complete,
    False when the last one is cut (the gateway rightly waits), None when the gateway
    must refuse it (a length below 4 or over the limit)."""
    pos = 0
    n = len(stream)
    while n - pos >= 5:
        ln = int.from_bytes(stream[pos + 1:pos + 5], "big")
        if ln < 4 or ln > max_msg:
            return None
        pos += 1 + ln
    return pos == n


def _startup_frame(rng: random.Random, pg: Any, user: str) -> bytes:
    base = rng.choice([
        pg.startup_message({"user": user, "database": "main"}),
        pg.startup_message({"user": user, "database": "main", "options": "-c work_mem=1MB"}),
        pg.pack_i32(8) + pg.pack_i32(pg.SSL_REQUEST),
        pg.pack_i32(8) + pg.pack_i32(pg.GSSENC_REQUEST),
        pg.cancel_request(rng.randrange(2**31), rng.randrange(2**31)),
    ])
    data = bytearray(base)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and data:
            k = rng.randrange(len(data))
            data[k] ^= 1 << rng.randrange(8)
        elif op == 1 and len(data) > 5:
            del data[rng.randrange(5, len(data)):]
            data[0:4] = len(data).to_bytes(4, "big")
        elif op == 2 and len(data) >= 4:
            data[0:4] = rng.choice([0, 7, 8, len(data) + 5, 10_001, 2**31 - 1]).to_bytes(4, "big")
        elif op == 3 and len(data) >= 4:
            data += rng.randbytes(rng.randrange(1, 20))
            data[0:4] = len(data).to_bytes(4, "big")
        else:
            data = bytearray(data.replace(b"\0", b"-"))
    return bytes(data)


# -- connections -------------------------------------------------------------------------------

def _answered(sock: socket.socket, hang: float, want: bytes | None,
              seen: bytearray | None = None) -> bool:
    """True when the gateway answered (``want`` seen, or any byte when None) or closed.
    ``seen`` collects what arrived (the first 4 kB: for a hang sample)."""
    sock.settimeout(hang)
    got = b""
    deadline = time.monotonic() + hang
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return True  # closed: an answer too
            if seen is not None and len(seen) < 4096:
                seen += chunk[:4096 - len(seen)]
            got += chunk
            if want is None or want in got:
                return True
            got = got[-64:]
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def _preauth(rng, pg, port, user, hang, figures: Figures) -> None:
    frame = _startup_frame(rng, pg, user)
    figures.frames += 1
    sock = socket.create_connection(("127.0.0.1", port), timeout=hang)
    try:
        sock.sendall(frame)
        length = int.from_bytes(frame[:4], "big") if len(frame) >= 4 else 0
        if len(frame) < 8 or length > len(frame):
            return  # incomplete: the gateway rightly waits (login_timeout bounds it)
        if not _answered(sock, hang, None):
            figures.hangs += 1
            if len(figures.hang_samples) < 5:
                figures.hang_samples.append(f"startup {frame[:40]!r}")
    except OSError:
        pass
    finally:
        sock.close()


def _session(rng, pg, raw_cls, port, user, password, corpus, batch, max_msg, hang,
             figures: Figures) -> None:
    raw = raw_cls(port, timeout=hang)
    try:
        msgs = raw.login(user, password)
        if msgs[-1] != (b"Z", b"I"):
            # The attacker's own tenant may be refused (its pooled server connection died
            # of what it sent): counted, not a failure of the gateway.
            figures.logins_refused += 1
            if len(figures.refusal_samples) < 3:
                figures.refusal_samples.append(repr(raw.error(msgs)))
            return
        frames = []
        for _ in range(batch):
            frame = rng.choice(corpus)
            if rng.random() < 0.7:
                frame = _mutate(rng, frame, corpus)
            frames.append(frame)
        figures.frames += len(frames)
        stream = b"".join(frames)
        complete = _complete(stream, max_msg)
        # Sync ends a batch; ROLLBACK leaves a transaction (aborted or not) the fuzz began;
        # then a query that must be answered.
        tail = pg.SYNC + pg.query("ROLLBACK") + pg.query(END.decode()) if complete else b""
        earlier = list(figures.recent)
        figures.recent.append(stream + tail)
        raw.sock.sendall(stream + tail)
        if complete is False:
            return  # the last message is cut: the gateway waits for its rest
        seen = bytearray()
        if not _answered(raw.sock, hang, None if complete is None else b"fuzz-end", seen):
            figures.hangs += 1
            if len(figures.hang_samples) < 5:
                # The connection's whole history after login, enough to replay it: every
                # frame as sent, the tail the fuzzer added, what came back, and what the
                # previous logged-in connections sent (each after its login, then closed).
                figures.hang_samples.append(
                    f"connection {figures.connections}: frames {frames!r} tail {tail!r} "
                    f"received {bytes(seen)!r}; earlier connections (oldest first) "
                    f"{earlier!r}")
    except OSError:
        pass  # closed by the gateway mid-send: an answer
    finally:
        raw.close()


def _canary(conninfo: str, stop: threading.Event, figures: Figures) -> None:
    import psycopg
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except Exception:
        figures.canary_failures += 1
        return
    with conn:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            except Exception:
                figures.canary_failures += 1
                return
            figures.canary_queries += 1
            ms = (time.monotonic() - t0) * 1000
            figures.canary_latencies_ms.append(ms)
            figures.canary_worst_ms = max(figures.canary_worst_ms, ms)
            time.sleep(0.02)


def run(frames: int = 20_000, seconds: float = 120.0, seed: int = 1, mode: str = "transaction",
        batch: int = 8, hang: float = 5.0, preauth_share: float = 0.2) -> Figures:
    from ogelkit_postgres import wire as pg
    from ogelkit_postgres.testing import RawClient, Tenant, pg_gateway, unique

    rng = random.Random(seed)
    attacker, canary = Tenant(unique("fuzz")), Tenant(unique("fzcn"))
    layers = '[[layers]]\ntype = "session"\n[[layers]]\ntype = "timeout"\n'
    max_msg = 1024 * 1024
    figures = Figures()
    handler = _Errors(figures)
    watched = [logging.getLogger("ogelkit"), logging.getLogger("asyncio")]
    for logger in watched:  # on the loggers themselves: the gateway may stop propagation
        logger.addHandler(handler)
    corpus = _corpus(pg)
    started = time.monotonic()
    # Relay errors are counted at their source too: a logging config of the process may
    # silence the gateway's loggers (log lines are rate-limited anyway).
    from ogelkit_postgres.connection import PostgresConnection
    original_crashed = PostgresConnection.crashed

    def crashed(conn: Any, exc: BaseException) -> None:
        figures.crashes += 1
        if len(figures.crash_samples) < 5:
            figures.crash_samples.append(f"relay error: {exc!r}")
        original_crashed(conn, exc)

    PostgresConnection.crashed = crashed  # type: ignore[method-assign]
    try:
        with pg_gateway([attacker, canary], mode=mode, extra=layers,
                        backend_options='max_message_size = "1MB"\nlogin_timeout = "5s"\n'
                                        'pool_size = 4') as gw:
            for name, logger in logging.Logger.manager.loggerDict.items():
                # A logging config applied earlier in this process may have disabled them.
                if name.startswith(("ogelkit", "asyncio")) and isinstance(logger, logging.Logger):
                    logger.disabled = False
            stop = threading.Event()
            watcher = threading.Thread(target=_canary, daemon=True, args=(
                gw.conninfo(canary, sslmode="disable"), stop, figures))
            watcher.start()
            try:
                while figures.frames < frames and time.monotonic() - started < seconds:
                    figures.connections += 1
                    if rng.random() < preauth_share:
                        _preauth(rng, pg, gw.port, attacker.slug, hang, figures)
                    else:
                        _session(rng, pg, RawClient, gw.port, attacker.slug, attacker.password,
                                 corpus, rng.randint(1, batch), max_msg, hang, figures)
            finally:
                stop.set()
                watcher.join(10)
            pool = gw.pool(attacker)
            figures.attacker_pool = pool.stats() if pool is not None else {}
            # The gateway survived: the canary's tenant can still log in.
            raw = RawClient(gw.port)
            try:
                if raw.login(canary.slug, canary.password)[-1] != (b"Z", b"I"):
                    figures.canary_failures += 1
            finally:
                raw.close()
    finally:
        PostgresConnection.crashed = original_crashed  # type: ignore[method-assign]
        for logger in watched:
            logger.removeHandler(handler)
    figures.seconds = time.monotonic() - started
    figures.peak_rss_mb = peak_rss_mb()
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", choices=("transaction", "session"), default="transaction")
    ap.add_argument("--batch", type=int, default=8, help="most frames per connection")
    ap.add_argument("--hang", type=float, default=5.0, help="seconds before a hang is counted")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run(args.frames, args.seconds, args.seed, args.mode, args.batch, args.hang)
    print(figures.line())
    for sample in figures.crash_samples:
        print("  crash:", sample)
    for sample in figures.hang_samples:
        print("  hang:", sample)
    for sample in figures.refusal_samples:
        print("  attacker refused:", sample)
    print("  attacker's pool at the end:", figures.attacker_pool)
    return 1 if figures.crashes or figures.hangs or figures.canary_failures else 0


if __name__ == "__main__":
    sys.exit(main())
