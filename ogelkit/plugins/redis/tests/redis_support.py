"""Helpers: gateways in a thread in front of the real test Redis, with freshly provisioned
tenants (unique slugs) whose ACL users and keys are removed afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis

from ogelkit.testing import gateway_thread, test_secret_key
from ogelkit.testing.services import redis_url

REDIS_URL = redis_url()
_parts = urlsplit(REDIS_URL)
REDIS_HOST = _parts.hostname or "127.0.0.1"
REDIS_PORT = _parts.port or 6379


@dataclass
class Tenant:
    slug: str
    password: str
    db: str = "main"

    @property
    def prefix(self) -> str:
        return f"t:{self.slug}:{self.db}:"

    @property
    def acl_user(self) -> str:
        return f"o7s:{self.slug}:{self.db}"


@dataclass
class Gw:
    port: int
    tenants: list[Tenant]
    running: object = None
    extra: dict = field(default_factory=dict)

    def client(self, tenant: Tenant, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, username=tenant.slug,
                           password=tenant.password, **kw)

    @property
    def a(self) -> Tenant:
        return self.tenants[0]

    @property
    def b(self) -> Tenant:
        return self.tenants[1]


def admin() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def cleanup(tenants: list[Tenant], url: str = REDIS_URL) -> None:
    r = redis.Redis.from_url(url)
    try:
        for t in tenants:
            r.acl_deluser(t.acl_user)
            batch = list(r.scan_iter(match=f"t:{t.slug}:*", count=1000))
            for i in range(0, len(batch), 500):
                r.unlink(*batch[i:i + 500])
    finally:
        r.close()


def new_tenants(n: int = 2, tier: str = "pro") -> list[Tenant]:
    sfx = secrets.token_hex(3)
    return [Tenant(f"rt{chr(97 + i)}{sfx}", f"pw-{i}-{sfx}") for i in range(n)]


def config_text(tenants: list[Tenant], *, tier: str = "pro", url: str = REDIS_URL,
                backend: str = "", extra: str = "", layers: str = "") -> str:
    seeds = "".join(
        f'\n[tenants.{t.slug}]\ntier = "{tier}"\npassword = "{t.password}"\n'
        f'databases.{t.db}.backend = "r"\n' for t in tenants)
    return (f'[listen]\nhost = "127.0.0.1"\nhttp = 0\nredis = 0\n\n'
            f'[gateway]\ndrain_timeout = "2s"\nadmin_token = "test-admin-token"\n\n'
            f'[control]\nurl = "sqlite:///:memory:"\nsecret_key = "{test_secret_key()}"\n'
            f"cache_ttl = \"0.2s\"\n\n"
            f'[backends.r]\ntype = "redis"\nurl = "{url}"\nmax_bulk_size = "16MB"\n'
            f"{backend}\n{extra}\n{seeds}\n{layers}")


@contextmanager
def gateway(tenants: list[Tenant], **kw) -> Iterator[Gw]:
    url = kw.get("url", REDIS_URL)
    try:
        with gateway_thread(config_text(tenants, **kw)) as running:
            yield Gw(running.port("redis"), tenants, running)
    finally:
        cleanup(tenants, url)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port (for kill/restart tests)."""

    def __init__(self, extra: list[str] | None = None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ogelkit-redis-test-")
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)



def redis_cli(port: int, tenant: Tenant, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--user", tenant.slug,
                          "--pass", tenant.password, "--no-auth-warning", *args],
                         input=stdin, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "REDISCLI_HISTFILE": "/dev/null"})
    return out.stdout + out.stderr
