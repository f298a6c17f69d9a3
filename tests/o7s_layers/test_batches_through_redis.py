"""Pipelined Redis commands admitted as batches (issue 15): redis-py pipelines through the
gateway with layers on get every reply in order (errors and refusals in place), and the
usage layer meters each command of a batch."""

from __future__ import annotations

import time

import pytest
import redis

from ogelkit.testing import gateway_thread, test_secret_key
from ogelkit.testing.services import redis_url

from . import conftest
from .conftest import Cli, Tenant


@pytest.fixture(autouse=True)
def _redis_plugins(monkeypatch):
    monkeypatch.setattr(conftest, "PLUGINS", "redis,ratelimit,session,usage,intelligence")
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", conftest.PLUGINS)


def config(tenants: list[Tenant], control: str) -> str:
    blocks = "".join(f"""
[tenants.{t.slug}]
tier = "{t.tier}"
password = "{t.password}"
databases.main.backend = "r"
""" for t in tenants)
    return f"""[listen]
host = "127.0.0.1"
http = 0
redis = 0

[control]
url = "{control}"
secret_key = "{test_secret_key()}"
cache_ttl = "200ms"

[backends.r]
type = "redis"
url = "{redis_url()}"

[tiers.tight]
base = "pro"
ops_per_second = 5
burst = 40

[[layers]]
type = "ratelimit"
mode = "reject"

[[layers]]
type = "session"

[[layers]]
type = "usage"
flush_interval = "300ms"

[[layers]]
type = "intelligence"
storm_threshold = 100000
{blocks}"""


def _usage(cli: Cli, tenant: Tenant, operations: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        rows = cli.usage(tenant)["databases"]
        main = next((d for d in rows if d["database"] == "main"), None)
        if main and main["operations"] + main.get("rejected", 0) >= operations:
            return main
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_pipelines_get_every_reply_and_every_command_is_metered(workdir):
    fast, tight = Tenant("pro", prefix="rbf"), Tenant("tight", prefix="rbt")
    path = workdir / "config.toml"
    path.write_text(config([fast, tight], f"sqlite:///{workdir}/control.db"))
    cli = Cli(path)
    try:
        with gateway_thread(path.read_text()) as running:
            port = running.port("redis")

            def client(t: Tenant) -> redis.Redis:
                return redis.Redis(host="127.0.0.1", port=port, username=t.slug,
                                   password=t.password, socket_timeout=10)

            r = client(fast)
            pipe = r.pipeline(transaction=False)
            for i in range(100):
                if i % 30 == 29:
                    pipe.incr("text")  # a string: WRONGTYPE-like error in place
                elif i % 2:
                    pipe.set(f"k{i}", i)
                else:
                    pipe.get(f"k{i - 1}")
            pipe.set("text", "not a number")  # after the INCRs: they count from nothing
            results = pipe.execute(raise_on_error=False)
            assert len(results) == 101
            for i, result in enumerate(results[:100]):
                if i % 30 == 29:
                    assert isinstance(result, int)  # "text" is unset until the last SET
                elif i % 2:
                    assert result is True
                else:
                    unset = i == 0 or (i - 1) % 30 == 29  # k{i-1} was an INCR's turn
                    assert result == (None if unset else str(i - 1).encode())
            pipe = r.pipeline(transaction=False)
            for _ in range(3):
                pipe.incr("text")
            pipe.get("k1")
            results = pipe.execute(raise_on_error=False)
            assert [type(x) for x in results[:3]] == [redis.ResponseError] * 3
            assert results[3] == b"1"
            assert r.ping()
            r.close()

            # Past the tight tier's burst: refusals stand in place of the replies they
            # refuse (a batch is refused as a whole), the connection stays in step, and the
            # tenant's other commands work again once the bucket refills.
            t = client(tight)
            results = []
            for _ in range(2):
                pipe = t.pipeline(transaction=False)
                for i in range(64):
                    pipe.set(f"t{i}", i)
                results += pipe.execute(raise_on_error=False)
            assert len(results) == 128
            refused = [x for x in results if isinstance(x, redis.ResponseError)]
            assert refused and all("rate" in str(x).lower() for x in refused), refused[:1]
            stored = sum(1 for x in results if x is True)
            assert stored + len(refused) == 128 and stored >= 40
            t.close()

            main = _usage(cli, fast, 105)
            # 101 + 4 pipelined commands (the gateway answers PING itself; redis-py's
            # handshake commands are not counted here).
            assert main["operations"] >= 105, main
            assert main["errors"] == 3, main
            tight_main = _usage(cli, tight, 64)
            assert tight_main["rejected"] >= len(refused), tight_main
            assert tight_main["operations"] >= stored, tight_main
    finally:
        for t in (fast, tight):
            cli("tenants", "delete", t.slug, "--yes", ok=False)
