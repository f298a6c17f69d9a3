"""The README quickstart works: examples/local.toml serves its demo tenant over every
protocol with ordinary clients (psql for Postgres and its Neon-local branch, redis-cli,
pymongo), and the CLI reads its usage and the Neon database's lifecycle state."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pymongo
import pytest

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.services import pg_dsn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gateway(tmp_path):
    from ogelkit_neon.testing import new_data_dir, remove_data_dir
    neon_dir = new_data_dir()
    env = {
        "OGELKIT_NEON_DIR": neon_dir,
        "OGELKIT_SECRET_KEY": test_secret_key(),
        "OGELKIT_CONTROL_URL": f"sqlite:///{tmp_path}/control.db",
        "OGELKIT_HTTP_PORT": "0", "OGELKIT_GATEWAY_PG_PORT": "0",
        "OGELKIT_GATEWAY_REDIS_PORT": "0", "OGELKIT_GATEWAY_MONGODB_PORT": "0",
        # A demo tenant of its own, so parallel runs on the shared servers never collide.
        "OGELKIT_DEMO_PASSWORD": "quickstart-pass",
    }
    text = (ROOT / "examples" / "local.toml").read_text().replace("[tenants.demo", "[tenants.qsdemo")
    try:
        proc = GatewayProcess(text, env=env, workdir=str(tmp_path)).start()
        try:
            yield proc, proc.ports(), env
        finally:
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            _drop_demo(env)
    finally:
        remove_data_dir(neon_dir)


def _cli(env, *args):
    full = {**os.environ, **env, "OGELKIT_CONFIG": str(ROOT / "examples" / "local.toml")}
    return subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True, text=True,
                          env=full)


def _drop_demo(env):
    # The seeded tenant's upstream role, database, ACL user and keys go away with it.
    result = _cli(env, "tenants", "delete", "qsdemo", "--yes")
    assert result.returncode in (0, 1), result.stderr


def test_quickstart_config_serves_every_protocol(gateway):
    proc, ports, env = gateway
    psql = subprocess.run(
        ["psql", f"host=127.0.0.1 port={ports['postgres']} user=qsdemo dbname=main sslmode=disable",
         "-XAtc", "show work_mem", "-c", "select 40 + 2"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "quickstart-pass"})
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.split() == ["16MB", "42"]
    neon = subprocess.run(
        ["psql", f"host=127.0.0.1 port={ports['postgres']} user=qsdemo dbname=app sslmode=disable",
         "-XAtc", "create table notes (t text)", "-c", "insert into notes values ('hi')",
         "-c", "select t from notes", "-c", "show port"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "quickstart-pass"})
    assert neon.returncode == 0, neon.stderr
    lines = neon.stdout.split()
    shared = urlsplit(pg_dsn()).port
    assert lines[-2] == "hi" and 55100 <= int(lines[-1]) <= 55999  # a compute of its own
    assert int(lines[-1]) != shared
    listed = _cli(env, "databases", "list", "qsdemo", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {d["name"]: d for d in json.loads(listed.stdout)}
    assert states["app"]["kind"] == "neon" and states["app"]["state"] in ("active", "idle")

    cli = ["redis-cli", "-p", str(ports["redis"]), "--user", "qsdemo", "--pass", "quickstart-pass",
           "--no-auth-warning"]
    assert subprocess.run([*cli, "set", "greeting", "hello"], capture_output=True,
                          text=True).stdout.strip() == "OK"
    assert subprocess.run([*cli, "get", "greeting"], capture_output=True,
                          text=True).stdout.strip() == "hello"

    client = pymongo.MongoClient(f"mongodb://qsdemo:quickstart-pass@127.0.0.1:{ports['mongodb']}/docs",
                                 serverSelectionTimeoutMS=5000)
    try:
        client.docs.things.insert_one({"n": 1})
        assert client.docs.things.count_documents({}) == 1
        assert client.list_database_names() == ["docs"]
    finally:
        client.close()

    # SIGTERM flushes usage; the CLI then reads it from the same control plane.
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    usage = _cli(env, "usage", "show", "qsdemo", "--json")
    assert usage.returncode == 0, usage.stderr
    by_db = {d["database"]: d for d in json.loads(usage.stdout)["databases"]}
    assert by_db["main"]["operations"] >= 2
    assert by_db["cache"]["operations"] >= 2
    assert by_db["docs"]["operations"] >= 2


@pytest.mark.parametrize(("example", "env"), [
    ("local.toml", {"OGELKIT_SECRET_KEY": test_secret_key()}),
    ("railway.toml", {"OGELKIT_SECRET_KEY": test_secret_key(), "OGELKIT_ADMIN_TOKEN": "t",
                      "DATABASE_URL": "postgresql://u:p@db.railway.internal:5432/railway",
                      "REDIS_URL": "redis://default:p@redis.railway.internal:6379",
                      "MONGO_URL": "mongodb://mongo:p@mongo.railway.internal:27017"}),
])
def test_example_configs_are_valid(example, env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OGELKIT_", "DATABASE_URL",
                                                                      "REDIS_URL", "MONGO_URL"))}
    result = subprocess.run([sys.executable, "-m", "ogelkit", "check",
                             str(ROOT / "examples" / example)], capture_output=True, text=True,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([sys.executable, "-m", "ogelkit", "check",
                              str(ROOT / "examples" / example)], capture_output=True, text=True,
                             env=clean)
    assert missing.returncode == 2 and "OGELKIT_SECRET_KEY" in missing.stderr
