"""A gateway (``ogelkit run``, its own process) with a Postgres, a Redis and a MongoDB
backend, all seven layers and a tight free tier, for the admin API and Studio tests."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from ogelkit.testing import GatewayProcess, minimal_config
from ogelkit.testing.services import ferretdb_url, pg_dsn, redis_url

ADMIN_TOKEN = "studio-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Gw:
    proc: GatewayProcess
    http: int
    postgres: int
    suffix: str

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def api(self, method: str, path: str, token: str | None = ADMIN_TOKEN,
            **kw) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url(path), headers=headers, timeout=30, **kw)


def gateway_config(suffix: str, control: str) -> str:
    text = minimal_config(f'''
[tiers.free]
ops_per_second = 3
burst = 3

[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "st{suffix}_"

[backends.cache]
type = "redis"
url = "{redis_url()}"
prefix_format = "st{suffix}:{{tenant}}:{{db}}:"
acl_user_format = "st{suffix}-{{tenant}}-{{db}}"

[backends.docs]
type = "mongodb"
url = "{ferretdb_url()}"
database_format = "st{suffix}_{{tenant}}_{{db}}"

[[layers]]
type = "gatekeeper"
[[layers]]
type = "ratelimit"
[[layers]]
type = "cost"
[[layers]]
type = "session"
[[layers]]
type = "timeout"
[[layers]]
type = "usage"
flush_interval = "1s"
[[layers]]
type = "intelligence"
''', control_url=control)
    return text.replace('admin_token = "test-admin-token"', f'admin_token = "{ADMIN_TOKEN}"') \
        .replace("http = 0\n", "http = 0\npostgres = 0\nredis = 0\nmongodb = 0\n")


@pytest.fixture(scope="package")
def gw() -> Iterator[Gw]:
    suffix = secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix="ogelkit-studio-")
    proc = GatewayProcess(gateway_config(suffix, f"sqlite:///{workdir}/control.db"),
                          workdir=workdir)
    proc.start(wait_ready=60)
    try:
        ports = proc.ports()
        yield Gw(proc, ports["http"], ports["postgres"], suffix)
    finally:
        proc.kill()
