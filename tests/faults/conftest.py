"""Fault tests (issue 16, "Faults, soak"): real servers are killed and restarted under a
real ``ogelkit run`` subprocess, with real clients (asyncpg, psycopg, redis-py, pymongo).

Helpers here:

- ``PrivatePostgres``: a PostgreSQL 15 cluster of the test's own (initdb into a temporary
  directory, trust auth on 127.0.0.1, a free port) that a test may SIGKILL, stop with
  ``pg_ctl stop -m fast|immediate`` and start again, without touching the workspace's shared server.
- ``FaultGateway``: ``ogelkit run`` on a SQLite control plane file with the tenants seeded
  from its config; reads usage with the real ``ogelkit usage show`` and drops the tenants'
  upstream databases with ``ogelkit tenants delete`` on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.gateway import metric_value
from ogelkit.testing.redis_server import free_port

PG_BIN = Path(os.environ.get("OGELKIT_PG_BIN", "/usr/lib/postgresql/15/bin"))
NAME_PREFIX = "o7sf_"  # upstream roles/databases of these tests
T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Tenant:
    """A tenant seeded from the gateway's config: ``databases`` maps name -> backend id."""

    def __init__(self, prefix: str, tier: str = "pro", databases: dict[str, str] | None = None):
        self.slug = unique(prefix)
        self.tier = tier
        self.databases = databases or {"main": "pg"}
        self.password = "pw-" + secrets.token_hex(8)

    def toml(self) -> str:
        text = f'\n[tenants.{self.slug}]\ntier = "{self.tier}"\npassword = "{self.password}"\n'
        for db, backend in self.databases.items():
            text += f'[tenants.{self.slug}.databases.{db}]\nbackend = "{backend}"\n'
        return text


# -- a private PostgreSQL cluster ---------------------------------------------------------


def _as_postgres(args: list[str], cwd: str) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` OS user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class PrivatePostgres:
    """A PostgreSQL cluster owned by one test: ``kill()`` (SIGKILL of the postmaster),
    ``stop(mode)`` (``pg_ctl stop -m fast|immediate``) and ``start()`` again, same port."""

    def __init__(self, port: int | None = None):
        if not (PG_BIN / "initdb").exists():  # scripts/services.sh installs them: a failure
            pytest.fail(f"no PostgreSQL binaries in {PG_BIN}: run scripts/services.sh up")
        self.port = port or free_port()
        # Under /var/tmp, not pytest's tmp_path: the postgres user cannot enter root's 0700
        # directories.
        self.root = Path(tempfile.mkdtemp(prefix="ogelkit-faultpg-", dir="/var/tmp"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )
        (self.data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\nfsync = off\n"
            "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
            "shared_buffers = 16MB\n"
        )
        (self.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if os.geteuid() == 0:
            for path in (self.data / "postgresql.auto.conf", self.data / "pg_hba.conf"):
                shutil.chown(path, "postgres", "postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            _as_postgres(args, str(self.root)),
            cwd=str(self.root),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout}{out.stderr}\n{self.log()}"
        return out

    def log(self) -> str:
        try:
            return self.logfile.read_text()[-3000:]
        except OSError:
            return ""

    def start(self) -> PrivatePostgres:
        self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "-s",
                "start",
            ],
            timeout=90,
        )
        return self

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:  # a killed postmaster may stay a zombie (its parent, init, may not reap it)
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status

    def kill(self) -> None:
        """SIGKILL the postmaster: its backends notice and exit, their sockets close with no
        goodbye, as in a crash of the server machine's database process."""
        pid = self.postmaster_pid()
        assert pid is not None, "the private cluster is not running"
        os.kill(pid, signal.SIGKILL)
        # The orphaned backends exit at their next wait (pg_sleep, a client read); a new
        # postmaster cannot start while one still holds the shared memory.
        deadline = time.monotonic() + 15
        while self._backends_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m MODE``. ``fast``: every backend ends its client's connection with
        FATAL 57P01 (admin_shutdown). ``immediate``: backends quit at once, sending only a
        WARNING (57P01) before their sockets close."""
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-s", "stop"])

    def _backends_alive(self) -> bool:
        """Whether any process of this cluster is left (they all run in its data dir)."""
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "cwd") == str(self.data):
                        return True
        return False

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Run one statement on the cluster directly (not through the gateway)."""
        import psycopg

        with psycopg.connect(f"{self.dsn}?connect_timeout=5", autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def tenant_backends(self) -> int:
        """Client backends of roles other than the superuser: the gateway's pooled server
        connections for tenant databases."""
        return self.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND usename <> 'postgres'"
        )[0][0]

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        yield cluster.start()
    finally:
        cluster.close()


# -- a gateway subprocess -----------------------------------------------------------------


class FaultGateway:
    """``ogelkit run`` with seeded tenants, its ports, /metrics, and the real CLI."""

    def __init__(
        self,
        workdir: Path,
        tenants: list[Tenant],
        body: str,
        *,
        plugins: str,
        drain: str = "5s",
        listen: tuple[str, ...] = ("postgres",),
        state_url: str | None = None,
    ):
        self.workdir = workdir
        self.tenants = tenants
        self.plugins = plugins
        state = f'[state]\nurl = "{state_url}"\n\n' if state_url else ""
        doors = "".join(f"{door} = 0\n" for door in listen)
        self.text = (
            f'[listen]\nhost = "127.0.0.1"\nhttp = 0\n{doors}\n'
            f'[gateway]\ndrain_timeout = "{drain}"\nadmin_token = "test-admin-token"\n\n'
            f'[control]\nurl = "sqlite:///{workdir}/control.db"\n'
            f'secret_key = "{test_secret_key()}"\ncache_ttl = "300ms"\n\n'
            f"{state}{body}\n" + "".join(t.toml() for t in tenants)
        )
        self.config = workdir / "config.toml"
        self.process = GatewayProcess(self.text, env={"OGELKIT_LOAD_PLUGINS": plugins}, workdir=str(workdir))
        self._ports: dict[str, int] = {}

    def start(self) -> FaultGateway:
        self.process.start(wait_ready=60)
        self._ports = self.process.ports()
        return self

    def port(self, protocol: str) -> int:
        return self._ports[protocol]

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(f"http://127.0.0.1:{self.port('http')}/metrics", name, **labels)

    def cli(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "OGELKIT_CONFIG": str(self.config), "OGELKIT_LOAD_PLUGINS": self.plugins}
        out = subprocess.run(
            [sys.executable, "-m", "ogelkit", *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if ok:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    def usage(self, tenant: Tenant) -> dict[str, dict[str, Any]]:
        """``ogelkit usage show --json`` of this month: database name -> its totals."""
        month = time.strftime("%Y-%m", time.gmtime())
        data = json.loads(self.cli("usage", "show", tenant.slug, "--month", month, "--json").stdout)
        return {d["database"]: d for d in data["databases"]}

    def log_lines(self, msg: str) -> list[dict[str, Any]]:
        out = []
        for line in self.process.log().splitlines():
            if f'"msg": "{msg}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def close(self) -> None:
        self.process.kill()
        for t in self.tenants:
            out = self.cli("tenants", "delete", t.slug, "--yes", ok=False)
            if out.returncode != 0 and "no tenant" not in out.stderr:
                print(f"cleanup of {t.slug} failed: {out.stderr}")


@contextlib.contextmanager
def fault_gateway(workdir: Path, tenants: list[Tenant], body: str, **kw: Any) -> Iterator[FaultGateway]:
    gw = FaultGateway(workdir, tenants, body, **kw)
    try:
        yield gw.start()
    finally:
        gw.close()


def wait_for(check: Callable[[], T], within: float, what: str, every: float = 0.1) -> T:
    """Poll ``check`` until it returns a truthy value (exceptions count as not yet)."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {within}s (last error: {last!r})")
