"""``ogelkit databases create --kind convex`` registers an existing deployment and prints
the platform token; the gateway then serves it, and the admin key is stored encrypted."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import convex
from convex_support import bounded, free_port, standins

from ogelkit.testing import GatewayProcess, minimal_config


def _ogelkit(config: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "ogelkit", "--config", config, *args],
                            capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_databases_create_registers_a_deployment(tmp_path):
    with standins("reg") as (dep,):
        control = f"sqlite:///{tmp_path}/control.db"
        text = minimal_config('[backends.cvx]\ntype = "convex"\n', control_url=control)
        config = tmp_path / "config.toml"
        config.write_text(text.replace("http = 0", f"http = {free_port()}"))
        _ogelkit(str(config), "tenants", "create", "reg")
        missing = _ogelkit(str(config), "databases", "create", "reg", "app", "--kind", "convex",
                           ok=False)
        assert missing.returncode != 0 and "--deployment-url" in missing.stderr + missing.stdout
        out = _ogelkit(str(config), "databases", "create", "reg", "app", "--kind", "convex",
                       "--deployment-url", dep.url, "--admin-key", dep.admin_key).stdout
        assert "app--reg.convex.localhost" in out
        token = re.search(r"ogk_cvx\.reg\.app\.[\w-]+", out).group(0)
        raw = sqlite3.connect(tmp_path / "control.db").execute(
            "SELECT * FROM databases").fetchall()
        assert dep.admin_key not in repr(raw) and token not in repr(raw)  # encrypted
        # The gateway on the CLI's control plane serves the registered database.
        http = free_port()
        proc = GatewayProcess(text.replace("http = 0", f"http = {http}"), workdir=str(tmp_path))
        proc.start(wait_ready=60)
        try:
            client = convex.ConvexClient(f"http://127.0.0.1:{http}")
            client.set_auth(token)
            assert bounded(client.query, "misc:whoami") == "reg"
        finally:
            proc.kill()
