"""examples/railway.toml run the way Railway runs it: its variables set (PORT, DATABASE_URL,
REDIS_URL, MONGO_URL), bound to "::", psql, redis-cli and pymongo all through the one TCP
port Railway's proxy forwards, then SIGTERM within the draining window."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.services import ferretdb_url, redis_url, scratch_pg_database

ROOT = Path(__file__).resolve().parent.parent
SEED = '''
[tenants.rwdemo]
tier = "pro"
password = "railway-pass"

[tenants.rwdemo.databases.main]
backend = "pg"

[tenants.rwdemo.databases.cache]
backend = "cache"

[tenants.rwdemo.databases.docs]
backend = "docs"
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def railway(tmp_path):
    with scratch_pg_database("ogelkit_railway") as database_url:
        env = {
            "PORT": str(_free_port()),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url(),
            "MONGO_URL": ferretdb_url(),
            "OGELKIT_SECRET_KEY": test_secret_key(),
            "OGELKIT_ADMIN_TOKEN": "railway-admin",
            "OGELKIT_TCP_PORT": str(_free_port()),
            "OGELKIT_GATEWAY_PG_PORT": "0", "OGELKIT_GATEWAY_REDIS_PORT": "0",
            "OGELKIT_GATEWAY_MONGODB_PORT": "0",
        }
        text = (ROOT / "examples" / "railway.toml").read_text() + SEED
        proc = GatewayProcess(text, env=env, workdir=str(tmp_path)).start()
        try:
            yield proc, env
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGTERM)
                proc.wait(40)
            cli = {**os.environ, **env, "OGELKIT_CONFIG": str(tmp_path / "config.toml")}
            (tmp_path / "config.toml").write_text(text)
            subprocess.run([sys.executable, "-m", "ogelkit", "tenants", "delete", "rwdemo",
                            "--yes"], capture_output=True, env=cli)


def test_railway_config_serves_every_protocol_on_one_port(railway):
    proc, env = railway
    port = env["OGELKIT_TCP_PORT"]
    psql = subprocess.run(
        ["psql", f"host=127.0.0.1 port={port} user=rwdemo dbname=main sslmode=disable",
         "-XAtc", "select 40 + 2"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "railway-pass"},
        timeout=30)
    assert psql.returncode == 0, psql.stderr + proc.log()[-2000:]
    assert psql.stdout.strip() == "42"

    cli = ["redis-cli", "-h", "::1", "-p", port, "--user", "rwdemo", "--pass", "railway-pass",
           "--no-auth-warning"]
    assert subprocess.run([*cli, "set", "k", "v"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "OK"
    assert subprocess.run([*cli, "get", "k"], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "v"

    client = pymongo.MongoClient(f"mongodb://rwdemo:railway-pass@127.0.0.1:{port}/docs",
                                 serverSelectionTimeoutMS=10000)
    try:
        client.docs.things.insert_one({"n": 1})
        assert client.docs.things.count_documents({}) == 1
    finally:
        client.close()

    health = subprocess.run(["curl", "-sf", f"http://[::1]:{env['PORT']}/readyz"],
                            capture_output=True, text=True, timeout=30)
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ready", health

    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    drain = 25  # examples/railway.toml drain_timeout, under Railway's 30 s before SIGKILL
    assert time.monotonic() - started < drain + 5
