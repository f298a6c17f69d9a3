"""SIGTERM to a real ``ogelkit run`` while clients of all three wire protocols run operations
without pause: the process exits 0 within its drain, every client ends with its protocol's
shutdown answer (docs/operations.md "Shutdown", docs/plugins/postgres.md, redis.md,
mongodb.md), and the usage layer stored exactly the operations the clients saw succeed, per
database: none lost, none invented.

Counted client-side, one success per operation whose reply arrived; the drivers' own retries
are off, so each operation was sent once.

It caught two drain defects (issue 16), since fixed: the Redis door closed a connection that
became idle during a drain only if it held a dedicated upstream connection, so busy clients
were served until the deadline and closed with commands in flight (replies lost, operations
metered); and a MongoDB connection closed at once answered a request already on its way with
a TCP reset instead of a clean end of stream.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import psycopg
import pymongo
import pytest
import redis
from pymongo.errors import AutoReconnect, ConnectionFailure, NotPrimaryError, OperationFailure
from redis.backoff import NoBackoff
from redis.retry import Retry

from ogelkit.testing.services import ferretdb_url, pg_dsn, redis_url

from .conftest import NAME_PREFIX, FaultGateway, Tenant, fault_gateway

PLUGINS = "postgres,redis,mongodb,session,usage"
DRAIN = 5.0
PER_PROTOCOL = 4

BODY = f"""[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "{NAME_PREFIX}"

[backends.r]
type = "redis"
url = "{redis_url()}"

[backends.mongo]
type = "mongodb"
url = "{ferretdb_url()}"

[[layers]]
type = "session"

[[layers]]
type = "usage"
flush_interval = "1s"
"""


class Client(threading.Thread):
    """One client running operations back to back until its connection ends."""

    def __init__(self, name: str, connect: Callable[[], object], op: Callable[[object, int], None]):
        super().__init__(name=name, daemon=True)
        self.connect, self.op = connect, op
        self.ok = 0
        self.last = 0.0  # when the last success arrived
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            conn = self.connect()
        except BaseException as exc:
            self.error = exc
            self.started.set()
            return
        i = 0
        try:
            while True:
                self.op(conn, i)
                self.ok += 1
                self.last = time.monotonic()
                i += 1
                if i == 5:
                    self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
            close = getattr(conn, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass


def pg_client(gw: FaultGateway, t: Tenant) -> Client:
    info = (
        f"host=127.0.0.1 port={gw.port('postgres')} user={t.slug} password={t.password} "
        "dbname=main sslmode=disable connect_timeout=10"
    )

    def op(conn, i: int) -> None:
        assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)

    return Client("pg", lambda: psycopg.connect(info, autocommit=True), op)


def redis_client(gw: FaultGateway, t: Tenant) -> Client:
    def connect():
        return redis.Redis(
            host="127.0.0.1",
            port=gw.port("redis"),
            username=f"{t.slug}.cache",
            password=t.password,
            socket_timeout=10,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )

    def op(conn, i: int) -> None:
        assert conn.set(f"k{threading.get_ident()}", i) is True

    return Client("redis", connect, op)


def mongo_client(gw: FaultGateway, t: Tenant) -> Client:
    url = f"mongodb://{t.slug}:{t.password}@127.0.0.1:{gw.port('mongodb')}/"

    def connect():
        client = pymongo.MongoClient(
            url,
            serverSelectionTimeoutMS=3000,
            retryReads=False,
            retryWrites=False,
            maxPoolSize=1,
            directConnection=True,
        )
        client.docs.things.insert_one({"warm": True})  # counted: it is an operation
        return client

    def op(client, i: int) -> None:
        if i % 2:
            assert client.docs.things.find_one({"warm": True}) is not None
        else:
            client.docs.things.insert_one({"i": i})

    return Client("mongodb", connect, op)


def shutdown_answer(protocol: str, exc: BaseException | None) -> str | None:
    """How ``exc`` ends a client's connection at shutdown, as documented ("error": the
    protocol's shutdown error; "close": the connection closed), or None for anything else."""
    text = str(exc)
    if protocol == "pg":
        # FATAL 57P01 admin_shutdown "the gateway is shutting down", then the close. A client
        # whose next statement was already on its way when the gateway closed may see only
        # the close (libpq: "server closed the connection unexpectedly").
        if isinstance(exc, psycopg.errors.AdminShutdown) and "shutting down" in text:
            return "error"
        if isinstance(exc, psycopg.OperationalError) and "server closed the connection" in text:
            return "close"
        return None
    if protocol == "redis":
        # -ERR terminating connection: the gateway is shutting down, then the close.
        if isinstance(exc, redis.ResponseError) and "shutting down" in text:
            return "error"
        if isinstance(exc, redis.ConnectionError):
            return "close"
        return None
    # code 91 ShutdownInProgress for a command sent within a second of becoming idle (pymongo
    # raises NotPrimaryError for it, or OperationFailure), then a clean close.
    details = getattr(exc, "details", None) or {}
    if isinstance(exc, (NotPrimaryError, OperationFailure)) and details.get("code") == 91:
        return "error"
    if isinstance(exc, (AutoReconnect, ConnectionFailure)) and "closed" in text:
        return "close"
    return None


@pytest.mark.slow
def test_sigterm_under_load_on_every_protocol(tmp_path):
    t = Tenant("fsig", databases={"main": "pg", "cache": "r", "docs": "mongo"})
    listen = ("postgres", "redis", "mongodb")
    with fault_gateway(tmp_path, [t], BODY, plugins=PLUGINS, listen=listen, drain=f"{DRAIN:.0f}s") as gw:
        clients = [
            make(gw, t) for make in (pg_client, redis_client, mongo_client) for _ in range(PER_PROTOCOL)
        ]
        for c in clients:
            c.start()
        for c in clients:
            assert c.started.wait(30), c.name
            assert c.error is None, (c.name, c.error)
        time.sleep(2)  # all running

        gw.process.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = gw.process.wait(DRAIN + 10)
        took = time.monotonic() - signalled
        for c in clients:
            c.join(15)
            assert not c.is_alive(), f"a {c.name} client still runs after the gateway exited"

        seen = {
            "main": sum(c.ok for c in clients if c.name == "pg"),
            "cache": sum(c.ok for c in clients if c.name == "redis"),
            # + each client's warm-up insert in connect()
            "docs": sum(c.ok for c in clients if c.name == "mongodb") + PER_PROTOCOL,
        }
        usage = gw.usage(t)
        stored = {db: usage.get(db, {}).get("operations", 0) for db in seen}
        endings = [(c.name, shutdown_answer(c.name, c.error)) for c in clients]
        served = {c.name: round(max(0.0, c.last - signalled), 2) for c in clients}
        print(f"SIGTERM: exit {code} in {took:.2f}s; operations seen {seen}, stored {stored}")
        print("served after SIGTERM for (s):", served)
        print(
            "client endings:", {f"{n}: {e}": endings.count((n, e)) for n, e in sorted(set(endings), key=str)}
        )

        assert code == 0, gw.process.log()[-3000:]
        assert took < DRAIN + 5, f"exit took {took:.1f}s (drain {DRAIN}s)"
        # Busy clients are closed as they become idle, not served until the drain deadline
        # (closed then with commands in flight, whose replies are lost).
        late = {n: s for n, s in served.items() if s > DRAIN / 2}
        assert not late, f"clients still served {late} s after SIGTERM: not closed when idle"
        bad = [(c.name, repr(c.error)) for c in clients if shutdown_answer(c.name, c.error) is None]
        assert not bad, bad
        assert not gw.log_lines("usage events dropped")
        assert stored == seen, "usage differs from the operations the clients saw succeed"
        assert all(n > 50 for n in seen.values()), seen
