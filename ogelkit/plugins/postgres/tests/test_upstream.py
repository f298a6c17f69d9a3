"""The upstream going away and coming back, connect timeouts, and cancel keys shared by two
gateway replicas through Redis."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time

import psycopg
import pytest
from ogelkit_postgres import wire as pg
from ogelkit_postgres.backend import parse_dsn
from ogelkit_postgres.testing import PREFIX, RawClient, Tenant, gateway_config, pg_gateway, unique

from ogelkit.testing import GatewayProcess
from ogelkit.testing.services import pg_dsn, redis_url


class Forwarder:
    """A TCP hop in front of the test PostgreSQL that can be stopped and started again on
    the same port: from the gateway's side, a server that restarts."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.AbstractServer | None = None
        self.transports: set[asyncio.Transport] = set()
        self.port = 0

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, reader, writer):
        self.transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports.add(up_writer.transport)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> int:
        async def go():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                     reuse_address=True)
            return self.server.sockets[0].getsockname()[1]
        self.port = self._run(go())
        return self.port

    def stop(self) -> None:
        async def go():
            self.server.close()
            for tr in list(self.transports):
                tr.abort()
            self.transports.clear()
        self._run(go())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_server_going_away_and_coming_back():
    t = Tenant(unique("pgup"))
    target = parse_dsn(pg_dsn())
    fwd = Forwarder(target["host"], target["port"])
    port = fwd.start()
    try:
        with pg_gateway([t], backend_options=f'upstream_port = {port}\n'
                                             'connect_timeout = "1s"') as gw:
            idle = psycopg.connect(gw.conninfo(t, sslmode="disable"), autocommit=True)
            busy = RawClient(gw.port)
            try:
                assert idle.execute("SELECT 1").fetchone() == (1,)
                assert busy.login(t.slug, t.password)[-1] == (b"Z", b"I")
                busy.send(pg.query("SELECT pg_sleep(2)"))
                time.sleep(0.3)
                fwd.stop()
                # In flight: a FATAL 08006, then the connection ends.
                kind, body = busy.message()
                fields = pg.error_fields(body)
                assert kind == b"E" and fields["C"] == "08006" and fields["S"] == "FATAL"
                assert busy.closed()
                # Idle between transactions: the client stays connected and is told why
                # its statement cannot run.
                with pytest.raises(psycopg.errors.ConnectionFailure):
                    idle.execute("SELECT 'while down'")
                with pytest.raises(psycopg.OperationalError):
                    psycopg.connect(gw.conninfo(t, sslmode="disable"))
                fwd.start()  # the server is back
                assert idle.execute("SELECT 'served again'").fetchone() == ("served again",)
                with psycopg.connect(gw.conninfo(t, sslmode="disable")) as fresh:
                    assert fresh.execute("SELECT 'new client'").fetchone() == ("new client",)
            finally:
                idle.close()
                busy.close()
    finally:
        fwd.close()


def test_upstream_connect_timeout():
    t = Tenant(unique("pgct"))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the kernel) but never answers
    try:
        with pg_gateway([t], backend_options=f'upstream_port = {silent.getsockname()[1]}\n'
                                             'connect_timeout = "0.5s"') as gw:
            raw = RawClient(gw.port)
            try:
                started = time.monotonic()
                fields = raw.error(raw.login(t.slug, t.password))
                assert fields["C"] == "08006" and "timed out" in fields["M"]
                assert time.monotonic() - started < 3
            finally:
                raw.close()
    finally:
        silent.close()


def test_cancel_reaches_the_replica_holding_the_client(tmp_path):
    """A CancelRequest that lands on another gateway replica is routed through Redis."""
    t = Tenant(unique("pgrc"))
    control = f"sqlite:///{tmp_path}/control.db"
    state = f'[state]\nurl = "{redis_url()}"\n'
    with pg_gateway([t], control_url=control, extra=state) as one, \
            pg_gateway([t], control_url=control, extra=state, cleanup=False) as two:
        client = RawClient(one.port)
        try:
            msgs = client.login(t.slug, t.password)
            key = next(body for kind, body in msgs if kind == b"K")
            pid, secret = pg.unpack_i32(key, 0)[0], pg.unpack_i32(key, 4)[0]
            client.send(pg.query("SELECT pg_sleep(10)"))
            time.sleep(0.5)
            started = time.monotonic()
            canceller = RawClient(two.port)
            canceller.send(pg.cancel_request(pid, secret))
            assert canceller.closed()
            canceller.close()
            kind, body = client.message()
            if kind == b"T":  # RowDescription comes before pg_sleep runs
                kind, body = client.message()
            assert kind == b"E" and pg.error_fields(body)["C"] == "57014"
            assert time.monotonic() - started < 5
            assert client.until(b"Z")[-1] == (b"Z", b"I")
        finally:
            client.close()


def test_sigterm_drains_idle_clients_and_lets_transactions_finish(tmp_path):
    """A real ``ogelkit run``: SIGTERM closes idle clients at once (57P01) and lets a client
    in a transaction finish it before it is closed; then the process exits cleanly."""
    t = Tenant(unique("pgdr"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    control = f"sqlite:///{tmp_path}/control.db"
    config = gateway_config([t], control_url=control).replace("postgres = 0", f"postgres = {port}")
    proc = GatewayProcess(config, workdir=str(tmp_path)).start()
    info = (f"host=127.0.0.1 port={port} user={t.slug} password={t.password} dbname=main "
            "sslmode=disable")
    try:
        idle = psycopg.connect(info, autocommit=True)
        busy = psycopg.connect(info)
        busy.execute("CREATE TABLE drained (a int)")  # a transaction is open
        proc.signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(psycopg.OperationalError, match="shutting down"):
            idle.execute("SELECT 1")
        busy.execute("INSERT INTO drained VALUES (1)")  # still served while draining
        busy.commit()
        with pytest.raises(psycopg.OperationalError):
            for _ in range(20):
                busy.execute("SELECT 1")
                busy.commit()
                time.sleep(0.1)
        assert proc.wait(15) == 0
        idle.close()
        busy.close()
    finally:
        proc.kill()
        asyncio.run(_deprovision(t))


async def _deprovision(t: Tenant) -> None:
    from ogelkit_postgres.backend import PostgresBackend
    from ogelkit_postgres.options import PostgresOptions

    from ogelkit import DatabaseRecord, TenantRecord
    from ogelkit.testing import test_context
    async with test_context() as ctx:
        backend = PostgresBackend(PostgresOptions(dsn=pg_dsn(), name_prefix=PREFIX), name="pg",
                                  context=ctx)
        await backend.open()
        try:
            await backend.deprovision(TenantRecord(t.slug, t.tier),
                                      DatabaseRecord(t.slug, "main", "postgres", "pg", {}))
        finally:
            await backend.close()
