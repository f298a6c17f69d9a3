"""``ogelkit`` as real processes: provisioning with the CLI, a gateway under ``ogelkit run``
(uvloop) and its drain on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis_support import REDIS_URL, Tenant, admin, cleanup, free_port, new_tenants

from ogelkit.testing import GatewayProcess, test_secret_key


def _config(workdir: Path, port: int) -> str:
    return (f'[listen]\nhost = "127.0.0.1"\nhttp = {free_port()}\nredis = {port}\n\n'
            f'[gateway]\ndrain_timeout = "1s"\n\n'
            f'[control]\nurl = "sqlite:///{workdir}/control.db"\n'
            f'secret_key = "{test_secret_key()}"\n\n'
            f'[backends.r]\ntype = "redis"\nurl = "{REDIS_URL}"\n')


def _cli(config: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ogelkit", "--config", str(config), *args],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_cli_provisioning_then_gateway_process_and_drain():
    workdir = Path(tempfile.mkdtemp(prefix="ogelkit-redis-proc-"))
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(_config(workdir, port))
    slug = new_tenants(1)[0].slug
    tenant = Tenant(slug, "")
    tenant_cache = Tenant(slug, "", db="cache")
    try:
        out = _cli(config, "tenants", "create", slug, "--tier", "pro")
        password = re.search(r"password: (\S+)", out).group(1)
        _cli(config, "databases", "create", slug, "main", "--kind", "redis")
        out = _cli(config, "databases", "create", slug, "cache", "--kind", "redis")
        assert f"redis://{slug}.cache:" in out and f"@localhost:{port}/0" in out
        assert tenant_cache.acl_user in {u.decode() if isinstance(u, bytes) else u
                                         for u in admin().acl_users()}
        with GatewayProcess(config.read_text(), workdir=str(workdir)) as gw:
            main = redis.Redis(port=port, username=slug, password=password)
            cache = redis.Redis(port=port, username=f"{slug}.cache", password=password)
            assert main.set("k", "main") and cache.set("k", "cache")
            assert main.get("k") == b"main" and cache.get("k") == b"cache"
            sub = redis.Redis(port=port, username=slug, password=password).pubsub()
            sub.subscribe("waiting")  # not idle: closed at the drain deadline
            assert sub.get_message(timeout=2)["type"] == "subscribe"
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert gw.wait(20) == 0
            assert time.monotonic() - t0 < 15
            try:
                msg = sub.get_message(timeout=2)
                assert msg is None or "shutting down" in str(msg)
            except redis.ConnectionError:
                pass
            except redis.ResponseError as exc:
                assert "shutting down" in str(exc)
        _cli(config, "databases", "delete", slug, "cache", "--yes")
        assert not list(admin().scan_iter(match=f"t:{slug}:cache:*"))
    finally:
        cleanup([tenant, tenant_cache])
