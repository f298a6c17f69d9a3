"""Test helpers for Postgres-protocol plugins: gateways with seeded tenants on real servers.

Used by this plugin's own tests (and reusable by the Neon plugin's). Every gateway runs in
a thread, so psql, psycopg and asyncpg of any event loop reach it over sockets; the tenants
in its config are provisioned at startup and ``pg_gateway`` drops their databases again on
exit, whatever the tests did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ogelkit
from ogelkit.testing import gateway_thread, minimal_config
from ogelkit.testing.services import pg_dsn

if TYPE_CHECKING:
    from ogelkit import Plugins

PREFIX = "o7st_"  # upstream names of test tenants, so strays are easy to spot


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Tenant:
    def __init__(self, slug: str, tier: str = "pro", databases: tuple[str, ...] = ("main",),
                 backend: str = "pg"):
        self.slug = slug
        self.tier = tier
        self.databases = databases
        self.backend = backend
        self.password = "pw-" + secrets.token_hex(8)


class PgGateway:
    def __init__(self, running: Any, tenants: list[Tenant]):
        self.running = running
        self.tenants = tenants

    @property
    def port(self) -> int:
        return self.running.port("postgres")

    @property
    def door(self):
        return self.running.gateway.frontdoors[0]

    @property
    def context(self):
        return self.running.context

    def backend(self, name: str = "pg"):
        return self.context.backends[name]

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the gateway's own loop (store and backend objects live there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.door.loop).result(timeout)

    def kw(self, tenant: Tenant, database: str = "main", **extra: Any) -> dict[str, Any]:
        """Connection keywords for psycopg / asyncpg-style callers."""
        return {"host": "127.0.0.1", "port": self.port, "user": tenant.slug,
                "password": tenant.password, "dbname": database, **extra}

    def conninfo(self, tenant: Tenant, database: str = "main", **extra: Any) -> str:
        kw = self.kw(tenant, database, **extra)
        return " ".join(f"{k}={v}" for k, v in kw.items())

    def asyncpg_kw(self, tenant: Tenant, database: str = "main", **extra: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": tenant.slug,
                "password": tenant.password, "database": database, **extra}

    def psql(self, tenant: Tenant, *args: str, database: str = "main", password: str | None = None,
             env: dict[str, str] | None = None, timeout: float = 60,
             conninfo: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PGPASSWORD": password or tenant.password,
                    "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10", **(env or {})}
        target = conninfo or (f"host=127.0.0.1 port={self.port} user={tenant.slug} "
                              f"dbname={database}")
        return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", target, *args],
                              env=full_env, capture_output=True, text=True, timeout=timeout)

    def pools(self, backend: str = "pg") -> dict:
        return self.backend(backend).pools

    def pool(self, tenant: Tenant, database: str = "main", backend: str = "pg"):
        return self.backend(backend).pools.get((tenant.slug, database))


def gateway_config(tenants: list[Tenant], *, mode: str = "transaction", backend_options: str = "",
                   extra: str = "", backends: str = "", listen: str = "",
                   control_url: str = "sqlite:///:memory:") -> str:
    text = minimal_config(extra, control_url=control_url)
    text = text.replace('http = 0\n', f'http = 0\npostgres = 0\n{listen}\n', 1)
    text += (f'\n[backends.pg]\ntype = "postgres"\ndsn = "{pg_dsn()}"\npool_mode = "{mode}"\n'
             f'name_prefix = "{PREFIX}"\n{backend_options}\n{backends}\n')
    for t in tenants:
        text += f'\n[tenants.{t.slug}]\ntier = "{t.tier}"\npassword = "{t.password}"\n'
        for db in t.databases:
            text += f'[tenants.{t.slug}.databases.{db}]\nbackend = "{t.backend}"\n'
    return text


async def _drop_all(gw: PgGateway) -> None:
    store = gw.context.store
    for tenant in await store.list_tenants():
        for db in await store.list_databases(tenant.slug):
            backend = gw.context.backends.get(db.backend)
            if backend is not None and backend.type_name == "postgres":
                try:
                    await backend.deprovision(tenant, db)
                except Exception as exc:  # report, but keep dropping the others
                    print(f"cleanup of {tenant.slug}/{db.name} failed: {exc}")


@contextlib.contextmanager
def pg_gateway(tenants: list[Tenant], *, mode: str = "transaction", backend_options: str = "",
               extra: str = "", backends: str = "", listen: str = "",
               control_url: str = "sqlite:///:memory:", plugins: Plugins | None = None,
               env: dict[str, str] | None = None, cleanup: bool = True) -> Iterator[PgGateway]:
    config = gateway_config(tenants, mode=mode, backend_options=backend_options, extra=extra,
                            backends=backends, listen=listen, control_url=control_url)
    with gateway_thread(config, plugins=plugins, env=env) as running:
        gw = PgGateway(running, tenants)
        try:
            yield gw
        finally:
            if cleanup:
                gw.call(_drop_all(gw), timeout=60)


def sqlstate_of(exc: BaseException) -> str | None:
    """SQLSTATE of an asyncpg or psycopg exception."""
    return getattr(exc, "sqlstate", None)


class RawClient:
    """A bare protocol client for what no driver sends: malformed frames, odd startup
    packets, GSSENCRequest. Logs in with SCRAM like any client when asked to."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        import socket
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the gateway")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def message(self) -> tuple[bytes, bytes]:
        from ogelkit_postgres import wire as pg
        head = self.recv_exact(5)
        length = pg.unpack_len(head, 1)[0]
        return head[:1], self.recv_exact(length - 4)

    def until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            msg = self.message()
            out.append(msg)
            if msg[0] == kind or (msg[0] == b"E" and kind != b"E"):
                return out

    def closed(self) -> bool:
        """True once the gateway has closed the connection (EOF)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except OSError:
            return True

    def login(self, user: str, password: str, database: str = "main",
              **params: str) -> list[tuple[bytes, bytes]]:
        from ogelkit_postgres import wire as pg
        from ogelkit_postgres.scram_client import ScramClient
        self.send(pg.startup_message({"user": user, "database": database, **params}))
        kind, body = self.message()
        if kind != b"R":
            return [(kind, body)]
        scram = ScramClient(password)
        self.send(pg.sasl_initial_response("SCRAM-SHA-256", scram.first()))
        kind, body = self.message()
        if kind != b"R":
            return [(kind, body)]
        self.send(pg.sasl_response(scram.final(body[4:])))
        return self.until(b"Z")

    def error(self, msgs: list[tuple[bytes, bytes]]) -> dict[str, str]:
        from ogelkit_postgres import wire as pg
        for kind, body in msgs:
            if kind == b"E":
                return pg.error_fields(body)
        return {}

    def close(self) -> None:
        self.sock.close()


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> None:
        self.chunks.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def relay_connection(session_mode: bool = True, cls: Any = None) -> tuple[Any, _Sink, _Sink]:
    """A relay-phase ``PostgresConnection`` with both sockets replaced by sinks and no
    gateway around it (no layers, a stand-in server connection): for tests of the relay's
    framing. Returns (connection, what the client got, what the server got)."""
    import types

    from ogelkit.frontdoor import ClientSet
    from ogelkit_postgres.connection import RELAY, PostgresConnection
    door = types.SimpleNamespace(context=types.SimpleNamespace(chain=None), clients=ClientSet(),
                                 metrics=types.SimpleNamespace(ok=0, error=0, rejected=0),
                                 observe=False)
    conn: Any = (cls or PostgresConnection)(door)  # type: ignore[arg-type]
    client, server = _Sink(), _Sink()
    conn.transport = client
    conn.phase = RELAY
    conn.session = ogelkit.Session("postgres", "test", "u")
    conn.session_mode = session_mode
    conn.max_msg = 200 * 1024 * 1024
    conn.server = types.SimpleNamespace(transport=server, status=b"I", applied={},
                                        to_deallocate=[])
    return conn, client, server


def self_signed_cert(directory: str, name: str = "db.test") -> tuple[str, str]:
    """A throw-away certificate and key (PEM files) for TLS tests."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name),
                                                        x509.DNSName(f"*.{name}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "gateway.crt")
    key_path = os.path.join(directory, "gateway.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
