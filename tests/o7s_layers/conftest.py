"""End-to-end tests of the session, usage and intelligence layers through the Postgres front
door, with real clients (psql, psycopg, asyncpg) and the real test PostgreSQL. Tests that
take the ``backend`` fixture run twice: against the shared Postgres backend (``pg``) and
against Neon-local databases (``neon``: a PostgreSQL compute per database), since layers
must behave identically for both.

Gateways run in a thread (``gateway_thread``) or as ``ogelkit run`` subprocesses
(``GatewayProcess``, for SIGTERM/SIGKILL), always on a SQLite control plane *file* so the
real ``ogelkit`` CLI (``usage show``, ``tenants set-tier``, ``tenants advise``) can read and
change it from outside. Tenants are seeded from the config (the gateway provisions their
upstream databases) and dropped again afterwards with ``ogelkit tenants delete``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ogelkit.testing import GatewayProcess, gateway_thread, test_secret_key
from ogelkit.testing.redis_server import free_port
from ogelkit.testing.services import pg_dsn, scratch_pg_database

PLUGINS = "postgres,neon,session,usage,intelligence"
NAME_PREFIX = "o7sl_"  # upstream roles/databases of these tests


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Tenant:
    def __init__(self, tier: str = "free", prefix: str = "lay", databases=("main",),
                 backend: str = "pg"):
        self.slug = unique(prefix)
        self.tier = tier
        self.databases = tuple(databases)
        self.backend = backend  # "pg" (shared Postgres) or "neon" (Neon-local)
        self.password = "pw-" + secrets.token_hex(8)


@pytest.fixture(params=["pg", "neon"])
def backend(request) -> str:
    """The backend of the tenants' databases: every such test runs against both."""
    return request.param


@contextlib.contextmanager
def _neon_data_dir(tenants: list[Tenant]) -> Iterator[str | None]:
    """A throw-away Neon-local data directory when some tenant uses Neon."""
    if not any(t.backend == "neon" for t in tenants):
        yield None
        return
    from ogelkit_neon.testing import new_data_dir, remove_data_dir
    path = new_data_dir()
    try:
        yield path
    finally:
        remove_data_dir(path)


def config_text(tenants: list[Tenant], *, layers: str, control_url: str, port: int = 0,
                mode: str = "transaction", state_url: str | None = None,
                extra: str = "", drain: str = "5s", neon_dir: str | None = None) -> str:
    state = f'[state]\nurl = "{state_url}"\n' if state_url else ""
    neon = ""
    if neon_dir is not None:
        from ogelkit_neon.testing import neon_backend_toml
        neon = neon_backend_toml(neon_dir, extra=f'pool_mode = "{mode}"')
    text = f"""[listen]
host = "127.0.0.1"
http = 0
postgres = {port}

[gateway]
drain_timeout = "{drain}"
admin_token = "test-admin-token"

[control]
url = "{control_url}"
secret_key = "{test_secret_key()}"
cache_ttl = "200ms"

{state}
[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
pool_mode = "{mode}"
name_prefix = "{NAME_PREFIX}"
{neon}
{layers}
{extra}
"""
    for t in tenants:
        text += f'\n[tenants.{t.slug}]\ntier = "{t.tier}"\npassword = "{t.password}"\n'
        for db in t.databases:
            text += f'[tenants.{t.slug}.databases.{db}]\nbackend = "{t.backend}"\n'
    return text


class Cli:
    """The real ``ogelkit`` command line against a config file."""

    def __init__(self, config: Path):
        self.config = config

    def __call__(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "OGELKIT_CONFIG": str(self.config), "OGELKIT_LOAD_PLUGINS": PLUGINS}
        result = subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True,
                                text=True, env=env, timeout=timeout)
        if ok:
            assert result.returncode == 0, result.stderr + result.stdout
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def usage(self, tenant: Tenant, *extra: str) -> dict[str, Any]:
        month = time.strftime("%Y-%m", time.gmtime())
        return self.json("usage", "show", tenant.slug, "--month", month, *extra)


class Gateway:
    """What a test needs of a running gateway: its port, clients, the CLI."""

    def __init__(self, port: int, tenants: list[Tenant], cli: Cli, running: Any = None,
                 process: GatewayProcess | None = None):
        self.port = port
        self.tenants = tenants
        self.cli = cli
        self.running = running
        self.process = process

    def conninfo(self, tenant: Tenant, database: str = "main", password: str | None = None) -> str:
        return (f"host=127.0.0.1 port={self.port} user={tenant.slug} dbname={database} "
                f"password={password or tenant.password} sslmode=disable connect_timeout=10")

    def asyncpg_kw(self, tenant: Tenant, database: str = "main",
                   password: str | None = None) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": tenant.slug,
                "password": password or tenant.password, "database": database, "ssl": False}

    def psql(self, tenant: Tenant, *args: str, password: str | None = None,
             database: str = "main") -> subprocess.CompletedProcess:
        env = {**os.environ, "PGPASSWORD": password or tenant.password, "PGSSLMODE": "disable",
               "PGCONNECT_TIMEOUT": "10"}
        return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At",
                               f"host=127.0.0.1 port={self.port} user={tenant.slug} "
                               f"dbname={database}", *args],
                              env=env, capture_output=True, text=True, timeout=60)

    @property
    def context(self):
        return self.running.context if self.running is not None else None


def _drop(cli: Cli, tenants: list[Tenant]) -> None:
    for t in tenants:
        result = cli("tenants", "delete", t.slug, "--yes", ok=False)
        if result.returncode != 0 and "no tenant" not in result.stderr:
            print(f"cleanup of {t.slug} failed: {result.stderr}")


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@contextlib.contextmanager
def thread_gateway(workdir: Path, tenants: list[Tenant], *, layers: str,
                   **kw: Any) -> Iterator[Gateway]:
    """A gateway in a thread of this process (stopped = drained, like SIGTERM)."""
    from ogelkit.plugins import load_plugins

    control = f"sqlite:///{workdir}/control.db"
    with _neon_data_dir(tenants) as neon_dir:
        text = config_text(tenants, layers=layers, control_url=control, neon_dir=neon_dir,
                           **kw)
        path = workdir / "config.toml"
        path.write_text(text)
        cli = Cli(path)
        plugins = load_plugins(entry_points=True)
        try:
            with gateway_thread(text, plugins=plugins) as running:
                yield Gateway(running.port("postgres"), tenants, cli, running=running)
        finally:
            _drop(cli, tenants)


@contextlib.contextmanager
def process_gateway(workdir: Path, tenants: list[Tenant], *, layers: str,
                    control: str | None = None, **kw: Any) -> Iterator[Gateway]:
    """``ogelkit run`` as a subprocess on a fixed free port (for signals)."""
    port = free_port()
    control = control or f"sqlite:///{workdir}/control.db"
    with _neon_data_dir(tenants) as neon_dir:
        text = config_text(tenants, layers=layers, control_url=control, port=port,
                           neon_dir=neon_dir, **kw)
        path = workdir / "config.toml"
        path.write_text(text)
        cli = Cli(path)
        proc = GatewayProcess(text, env={"OGELKIT_LOAD_PLUGINS": PLUGINS}, workdir=str(workdir))
        try:
            proc.start(wait_ready=60)
            yield Gateway(port, tenants, cli, process=proc)
        finally:
            proc.kill()
            _drop(cli, tenants)


@pytest.fixture(autouse=True)
def _only_our_plugins(monkeypatch):
    """In-process gateways load only the plugins these tests are about."""
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", PLUGINS)


def log_lines(proc: GatewayProcess, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.log().splitlines():
        if f'"msg": "{msg}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


SQLSTATE = re.compile(r"\b([0-9A-Z]{5})\b")


@pytest.fixture(params=["sqlite", "postgres"])
def control_url(request, workdir):
    """A control plane of each engine: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{workdir}/control.db"
        return
    with scratch_pg_database("o7sl_cp") as url:
        yield url
