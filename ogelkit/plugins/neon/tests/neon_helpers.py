"""Helpers of the Neon plugin's tests: gateways whose tenants have Neon-local databases.

Computes are real PostgreSQL 15 clusters under a throw-away directory in /var/tmp (the
postgres OS user, which runs them when the tests run as root, must reach it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway

PG_BIN = "/usr/lib/postgresql/15/bin"


def new_data_dir() -> str:
    path = tempfile.mkdtemp(prefix="ogelkit-neon-test-", dir="/var/tmp")
    os.chmod(path, 0o755)
    return path


def stop_all(data_dir: str) -> None:
    """Stop every compute left under ``data_dir`` (whatever a failing test left behind)."""
    for pid_file in Path(data_dir).glob("*/*/pgdata/postmaster.pid"):
        pgdata = pid_file.parent
        cmd = [f"{PG_BIN}/pg_ctl", "stop", "-D", str(pgdata), "-m", "immediate"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, capture_output=True, timeout=30, cwd="/")


def neon_backend_toml(data_dir: str, *, name: str = "neon", extra: str = "",
                      local: str = "") -> str:
    return (f'\n[backends.{name}]\ntype = "neon"\n{extra}\n'
            f'[backends.{name}.local]\ndata_dir = "{data_dir}"\nport_range = "56100-56999"\n'
            f'{local}\n')


async def drop_neon(gw: PgGateway) -> None:
    store = gw.context.store
    for tenant in await store.list_tenants():
        for db in await store.list_databases(tenant.slug):
            backend = gw.context.backends.get(db.backend)
            if backend is not None and backend.type_name == "neon":
                with contextlib.suppress(Exception):
                    await backend.deprovision(tenant, db)


@contextlib.contextmanager
def neon_gateway(tenants: list[Tenant], *, local: str = "", extra: str = "",
                 backend_extra: str = "") -> Iterator[tuple[PgGateway, str]]:
    data_dir = new_data_dir()
    try:
        with pg_gateway(tenants, backends=neon_backend_toml(data_dir, local=local,
                                                            extra=backend_extra),
                        extra=extra) as gw:
            try:
                yield gw, data_dir
            finally:
                gw.call(drop_neon(gw), timeout=120)
    finally:
        stop_all(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
