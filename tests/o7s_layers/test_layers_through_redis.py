"""The same layers, unchanged, behind the Redis front door: commands are metered and shown by
`ogelkit usage show`, wrong AUTH passwords get the (tenant, address) banned."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ogelkit.testing import gateway_thread
from ogelkit.testing.services import redis_url

from . import conftest
from .conftest import Cli, Tenant


@pytest.fixture(autouse=True)
def _redis_plugins(monkeypatch):
    monkeypatch.setattr(conftest, "PLUGINS", "redis,session,usage,intelligence")
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", conftest.PLUGINS)


def config(tenant: Tenant, control: str) -> str:
    from ogelkit.testing import test_secret_key
    return f"""[listen]
host = "127.0.0.1"
http = 0
redis = 0

[gateway]
drain_timeout = "2s"

[control]
url = "{control}"
secret_key = "{test_secret_key()}"
cache_ttl = "200ms"

[backends.r]
type = "redis"
url = "{redis_url()}"

[[layers]]
type = "session"

[[layers]]
type = "usage"
flush_interval = "300ms"

[[layers]]
type = "intelligence"
auth_failures = 5

[tenants.{tenant.slug}]
tier = "{tenant.tier}"
password = "{tenant.password}"
databases.main.backend = "r"
"""


def test_redis_commands_are_metered_and_bad_passwords_banned(workdir):
    tenant = Tenant("free", prefix="rl")
    path = workdir / "config.toml"
    path.write_text(config(tenant, f"sqlite:///{workdir}/control.db"))
    cli = Cli(path)
    try:
        with gateway_thread(path.read_text()) as running:
            port = running.port("redis")

            def client(password: str) -> redis.Redis:
                # No retries: each AUTH below is exactly one login attempt.
                return redis.Redis(host="127.0.0.1", port=port, username=tenant.slug,
                                   password=password, socket_timeout=10,
                                   retry=Retry(NoBackoff(), 0))

            good = client(tenant.password)
            for i in range(5):
                assert good.set(f"k{i}", "v" * 100)
            assert [good.get(f"k{i}") for i in range(5)] == [b"v" * 100] * 5
            good.close()

            def metered():
                rows = cli.usage(tenant)["databases"]
                main = next((d for d in rows if d["database"] == "main"), None)
                return main if main and main["operations"] >= 10 and main["connections"] else None

            deadline = time.monotonic() + 10
            while (main := metered()) is None:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            # 5 SET + 5 GET; AUTH is the login, and redis-py's CLIENT SETINFO handshake is
            # refused by the gateway (metered as refusals, not operations).
            assert main["operations"] == 10
            assert main["bytes_in"] >= 10 * 20 and main["bytes_out"] >= 5 * 100
            assert main["rows"] == 0  # Redis reports no row counts
            assert main["gb_seconds"] > 0 and main["vcpu_seconds"] > 0

            for _ in range(5):
                with pytest.raises(redis.AuthenticationError):
                    client("wrong").ping()
            with pytest.raises(redis.RedisError) as info:
                client(tenant.password).ping()  # right password, but banned now
            assert "too many failed logins" in str(info.value)
    finally:
        cli("tenants", "delete", tenant.slug, "--yes", ok=False)
