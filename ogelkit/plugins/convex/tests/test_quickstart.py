"""examples/local.toml's demo tenant has a Convex database; the token comes from
``ogelkit convex token`` and the real client reaches the deployment (a stand-in, as
scripts/quickstart.sh starts it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import convex
from convex_support import StandIn, bounded

from ogelkit.testing import GatewayProcess, test_secret_key

ROOT = Path(__file__).resolve().parents[4]


def _convex_only(text: str) -> str:
    """local.toml without its other database kinds (tests/test_quickstart.py runs those), so
    this test needs only the convex plugin."""
    out, skip = [], False
    for line in text.splitlines():
        if line.startswith("["):
            skip = line.strip() in ("[backends.pg]", "[backends.cache]", "[backends.docs]") or \
                (line.startswith("[tenants.demo.databases.") and "functions" not in line)
        if line.split(" = ")[0] in ("postgres", "redis", "mongodb"):
            continue
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def test_local_example_serves_its_convex_database(tmp_path):
    dep = StandIn("qsdemo", "quickstart-admin-key").start()
    env = {"OGELKIT_SECRET_KEY": test_secret_key(),
           "OGELKIT_CONTROL_URL": f"sqlite:///{tmp_path}/control.db",
           "OGELKIT_HTTP_PORT": "0", "OGELKIT_GATEWAY_PG_PORT": "0",
           "OGELKIT_GATEWAY_REDIS_PORT": "0", "OGELKIT_GATEWAY_MONGODB_PORT": "0",
           "OGELKIT_DEMO_PASSWORD": "quickstart-pass", "OGELKIT_CONVEX_URL": dep.url,
           "OGELKIT_CONVEX_ADMIN_KEY": dep.admin_key}
    text = _convex_only((ROOT / "examples" / "local.toml").read_text()).replace(
        "[tenants.demo", "[tenants.cvxdemo")
    (tmp_path / "local.toml").write_text(text)
    full = {**os.environ, **env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ogelkit", "--config",
                               str(tmp_path / "local.toml"), *args], capture_output=True,
                              text=True, env=full, timeout=120)

    proc = GatewayProcess(text, env=env, workdir=str(tmp_path)).start(wait_ready=60)
    try:
        ready = next(line for line in proc.log().splitlines() if '"msg": "ready"' in line)
        port = int(json.loads(ready)["addresses"]["http"][0].rsplit(":", 1)[1])
        token = cli("convex", "token", "cvxdemo", "functions")
        assert token.returncode == 0, token.stderr
        client = convex.ConvexClient(f"http://127.0.0.1:{port}")
        client.set_auth(token.stdout.strip())
        assert bounded(client.query, "misc:whoami") == "qsdemo"
        assert bounded(client.mutation, "messages:send", {"body": "hi"}) == "qsdemo-1"
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        dep.kill()
        cli("tenants", "delete", "cvxdemo", "--yes")
    usage = cli("convex", "usage", "cvxdemo", "--json")
    assert usage.returncode == 0, usage.stderr
    rows = json.loads(usage.stdout)["functions"]
    assert rows["messages:send"]["calls"] == 1 and rows["misc:whoami"]["calls"] == 1
