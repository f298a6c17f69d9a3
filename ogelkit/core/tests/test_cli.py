"""The operator CLI end to end, as subprocesses against a real SQLite control plane."""

import json
import os
import subprocess
import sys

import anyio
import pytest

from ogelkit.control import UsageEvent, open_store
from ogelkit.scram import verify_password
from ogelkit.testing import minimal_config, test_secret_key


@pytest.fixture
def cli(tmp_path, linegate_site):
    config = tmp_path / "config.toml"
    config.write_text(minimal_config(control_url=f"sqlite:///{tmp_path}/cp.db") +
                      '[backends.lines]\ntype = "line"\n\n[listen.ports]\nline = 7000\n'
                      '[tiers.pro.price]\nbase = 50\nincluded_vcpu_hours = 0\nvcpu_hour = 3.6\n')

    def run(*args, ok=True, stdin=None):
        env = {**os.environ, "PYTHONPATH": str(linegate_site), "OGELKIT_CONFIG": str(config)}
        result = subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True,
                                text=True, env=env, input=stdin)
        if ok:
            assert result.returncode == 0, result.stderr + result.stdout
        return result

    run.db = tmp_path / "cp.db"
    return run


def _store(cli):
    return open_store(f"sqlite:///{cli.db}", test_secret_key())


def _verifier(cli, slug):
    async def go():
        store = _store(cli)
        await store.open()
        try:
            return await store.get_verifier(slug)
        finally:
            await store.close()
    return anyio.run(go)


def _password(output: str) -> str:
    for line in output.splitlines():
        if "password" in line and ":" in line and "shown" not in line:
            return line.rsplit(": ", 1)[1].strip()
    raise AssertionError(output)


def test_tenant_lifecycle(cli):
    created = cli("tenants", "create", "acme", "--tier", "pro")
    password = _password(created.stdout)
    assert verify_password(_verifier(cli, "acme"), password)
    assert cli("tenants", "create", "acme", ok=False).returncode == 1
    bad = cli("tenants", "create", "zed", "--tier", "platinum", ok=False)
    assert bad.returncode == 2 and 'unknown tier "platinum"' in bad.stderr
    assert cli("tenants", "create", "Bad_Slug", ok=False).returncode == 2

    listed = json.loads(cli("tenants", "list", "--json").stdout)
    assert [(t["slug"], t["tier"], t["status"]) for t in listed] == [("acme", "pro", "active")]
    assert "acme" in cli("tenants", "list").stdout

    cli("tenants", "set-tier", "acme", "starter")
    cli("tenants", "suspend", "acme")
    shown = json.loads(cli("tenants", "show", "acme", "--json").stdout)
    assert (shown["tier"], shown["status"], shown["has_password"]) == ("starter", "suspended", True)
    assert shown["limits"]["connections"] == 10
    cli("tenants", "resume", "acme")
    assert "status   active" in cli("tenants", "show", "acme").stdout

    rotated = _password(cli("credentials", "rotate", "acme").stdout)
    assert rotated != password
    verifier = _verifier(cli, "acme")
    assert verify_password(verifier, rotated) and not verify_password(verifier, password)

    assert cli("tenants", "delete", "acme", ok=False, stdin="n\n").returncode == 1
    cli("tenants", "delete", "acme", "--yes")
    assert json.loads(cli("tenants", "list", "--json").stdout) == []
    missing = cli("tenants", "show", "acme", ok=False)
    assert missing.returncode == 1 and 'no tenant "acme"' in missing.stderr


def test_databases_are_provisioned_by_their_backend(cli):
    cli("tenants", "create", "acme")
    out = cli("databases", "create", "acme", "main", "--kind", "line").stdout
    assert "connection string: line://acme:<password>@localhost:7000/main" in out
    assert "existing password" in out
    listed = json.loads(cli("databases", "list", "acme", "--json").stdout)
    assert [(d["name"], d["kind"], d["backend"]) for d in listed] == [("main", "line", "lines")]
    again = cli("databases", "create", "acme", "main", "--kind", "line")  # idempotent
    assert again.returncode == 0
    wrong = cli("databases", "create", "acme", "x", "--kind", "mongodb", ok=False)
    assert wrong.returncode == 2 and 'no backend of kind "mongodb"' in wrong.stderr
    cli("databases", "delete", "acme", "main", "--yes")
    assert json.loads(cli("databases", "list", "--json").stdout) == []
    gone = cli("databases", "delete", "acme", "main", "--yes", ok=False)
    assert 'has no database "main"' in gone.stderr


def test_new_tenant_without_password_gets_one_with_its_first_database(cli):
    async def go():
        store = _store(cli)
        await store.open()
        await store.migrate()
        await store.create_tenant("bare", "free")
        await store.close()
    anyio.run(go)
    out = cli("databases", "create", "bare", "main", "--kind", "line").stdout
    password = _password(out)
    assert f"line://bare:{password}@localhost:7000/main" in out


def test_usage_show_totals_and_invoice(cli):
    cli("tenants", "create", "acme", "--tier", "pro")

    async def record():
        store = _store(cli)
        await store.open()
        hour = 1_793_491_200.0  # 2026-11-01T00:00Z
        await store.record_usage([
            UsageEvent("acme", "main", ts=hour + 60, operations=100, bytes_in=1000,
                       vcpu_seconds=3600.0, duration=2.0),
            UsageEvent("acme", "cache", ts=hour + 7200, operations=5),
            UsageEvent("acme", "main", ts=hour - 10, operations=999),  # October: not counted
        ])
        await store.close()
    anyio.run(record)
    data = json.loads(cli("usage", "show", "acme", "--month", "2026-11", "--json").stdout)
    by_db = {d["database"]: d for d in data["databases"]}
    assert by_db["main"]["operations"] == 100 and by_db["cache"]["operations"] == 5
    assert data["invoice"]["vcpu_hours"] == pytest.approx(1.0)
    assert data["invoice"]["total"] == pytest.approx(53.6)  # base 50 + 1 vCPU-hour at 3.6
    only = json.loads(cli("usage", "show", "acme", "--month", "2026-11", "--database", "cache",
                          "--json").stdout)
    assert [d["database"] for d in only["databases"]] == ["cache"]
    human = cli("usage", "show", "acme", "--month", "2026-11").stdout
    assert "main" in human and "total" in human and "53.60" in human
    bad = cli("usage", "show", "acme", "--month", "November", ok=False)
    assert bad.returncode == 2 and "2026-11" in bad.stderr


def test_secret_key_and_version(cli):
    key = cli("secret-key").stdout.strip()
    assert len(key) == 44
    assert "ogelkit, version" in cli("--version").stdout


def test_missing_config_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OGELKIT_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "ogelkit", "tenants", "list"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "no config given" in result.stderr


def test_control_plane_commands_import_no_plugin(cli, tmp_path):
    """tenants/databases list|show and usage show only talk to the control plane: they
    parse the config without plugins (no backend or layer module imported, not even the
    test plugin this config's backend needs, which is not on the path here), which is
    what makes them fast. The root --help (which lists plugin commands) loads them."""
    cli("tenants", "create", "quick", "--tier", "pro")
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['ogelkit', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('ogelkit', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('linegate', 'ogelkit_',"
        " 'prometheus_client')))\n"
        "print('LOADED', ','.join(loaded))\n")
    for args in (["tenants", "list"], ["tenants", "show", "quick"], ["databases", "list"],
                 ["usage", "show", "quick"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                                text=True, env={**os.environ, "OGELKIT_CONFIG":
                                                str(tmp_path / "config.toml")})
        assert result.returncode == 0, result.stderr
        assert "quick" in result.stdout or args[0] == "databases", result.stdout
        assert result.stdout.strip().endswith("LOADED"), (args, result.stdout)
    # A command that fires plugin hooks loads them (the test plugin "line" among them).
    full = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.environ.get(
                              "PYTHONPATH", "")})
    assert "LOADED" in full.stdout and "ogelkit_" in full.stdout.split("LOADED", 1)[1], \
        full.stdout[-500:]
