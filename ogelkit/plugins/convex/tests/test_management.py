"""The Management API driver: ``databases create --kind convex`` without a deployment URL
creates a project with a deployment and a deploy key (against the Management API stand-in),
the gateway serves it, and ``databases delete`` deletes the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import convex
import httpx
import pytest
from convex_support import ManagementStandIn, bounded, free_port

from ogelkit.testing import GatewayProcess, minimal_config

TOKEN_ENV = "OGELKIT_TEST_CONVEX_TEAM_TOKEN"


@pytest.fixture(scope="module")
def management():
    api = ManagementStandIn().start()
    try:
        yield api
    finally:
        api.kill()


def _config(tmp_path, api: ManagementStandIn) -> tuple[str, str]:
    control = f"sqlite:///{tmp_path}/control.db"
    text = minimal_config(f'''
[backends.cvx]
type = "convex"
team_id = "{api.team_id}"
team_token_env = "{TOKEN_ENV}"
management_url = "{api.url}/v1"
''', control_url=control)
    path = tmp_path / "config.toml"
    path.write_text(text.replace("http = 0", f"http = {free_port()}"))
    return str(path), text


def _ogelkit(config: str, *args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.run([sys.executable, "-m", "ogelkit", "--config", config, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def _projects(api: ManagementStandIn) -> list[dict]:
    r = httpx.get(f"{api.url}/v1/teams/{api.team_id}/list_projects",
                  headers={"authorization": f"Bearer {api.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_create_serve_and_delete_a_managed_deployment(tmp_path, management):
    config, text = _config(tmp_path, management)
    assert _ogelkit(config, "tenants", "create", "mgd", token=None).returncode == 0
    out = _ogelkit(config, "databases", "create", "mgd", "app", "--kind", "convex",
                   token=management.token)
    assert out.returncode == 0, out.stdout + out.stderr
    token = re.search(r"ogk_cvx\.mgd\.app\.[\w-]+", out.stdout).group(0)
    assert [p["name"] for p in _projects(management)] == ["ogelkit-mgd-app"]
    # The gateway serves the created deployment with the deploy key it was given.
    http = free_port()
    proc = GatewayProcess(text.replace("http = 0", f"http = {http}"), workdir=str(tmp_path))
    proc.start(wait_ready=60)
    try:
        client = convex.ConvexClient(f"http://127.0.0.1:{http}")
        client.set_auth(token)
        assert bounded(client.query, "misc:whoami").startswith("standin-")
    finally:
        proc.kill()
    # A project of the name already there (an interrupted create) is an error naming it,
    # not a second project.
    r = httpx.post(f"{management.url}/v1/teams/{management.team_id}/create_project",
                   json={"projectName": "ogelkit-mgd-dup", "deploymentType": "dev"},
                   headers={"authorization": f"Bearer {management.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    dup = _ogelkit(config, "databases", "create", "mgd", "dup", "--kind", "convex",
                   token=management.token)
    assert dup.returncode != 0 and "ogelkit-mgd-dup" in dup.stderr + dup.stdout
    assert sorted(p["name"] for p in _projects(management)) == ["ogelkit-mgd-app",
                                                                "ogelkit-mgd-dup"]
    deleted = _ogelkit(config, "databases", "delete", "mgd", "app", "--yes",
                       token=management.token)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert [p["name"] for p in _projects(management)] == ["ogelkit-mgd-dup"]


def test_a_missing_or_wrong_team_token_is_a_clear_error(tmp_path, management):
    config, _ = _config(tmp_path, management)
    assert _ogelkit(config, "tenants", "create", "bad", token=None).returncode == 0
    before = len(_projects(management))
    missing = _ogelkit(config, "databases", "create", "bad", "app", "--kind", "convex",
                       token=None)
    assert missing.returncode != 0 and TOKEN_ENV in missing.stderr + missing.stdout
    wrong = _ogelkit(config, "databases", "create", "bad", "app", "--kind", "convex",
                     token="not-the-token")
    assert wrong.returncode != 0
    assert "401" in wrong.stderr + wrong.stdout and "team access token" in \
        wrong.stderr + wrong.stdout
    assert len(_projects(management)) == before
