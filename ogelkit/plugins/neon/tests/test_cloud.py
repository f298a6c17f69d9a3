"""The cloud driver against the Neon API STAND-IN (neon_standin.py; not Neon): provisioning,
clients through the gateway with the endpoint id in the startup packet over TLS (certificate
verified), CancelRequests, branch, reset, sleep/wake, 423/503/429 retries, a failed
operation and no blind re-POST after a timeout."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from neon_helpers import drop_neon
from neon_standin import NeonStandIn
from ogelkit_neon.cloud import CloudError, NeonApi, suspend_timeout
from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway, unique

from ogelkit import DatabaseRecord
from ogelkit.testing.services import pg_dsn

KEY_ENV = "OGELKIT_TEST_NEON_API_KEY"


@pytest.fixture(scope="module")
def standin() -> Iterator[NeonStandIn]:
    s = NeonStandIn(pg_dsn(), api_key="standin-" + os.urandom(4).hex()).start()
    os.environ[KEY_ENV] = s.api_key
    try:
        yield s
    finally:
        os.environ.pop(KEY_ENV, None)
        s.stop()


def _cloud_backend(standin: NeonStandIn, tls: str) -> str:
    return (f'\n[backends.neon]\ntype = "neon"\ndriver = "cloud"\n'
            f'[backends.neon.cloud]\napi_url = "{standin.url}"\napi_key_env = "{KEY_ENV}"\n'
            f'project_name = "o7s-test-{os.urandom(3).hex()}"\nrequest_timeout = "2s"\n'
            f'retry_budget = "20s"\noperation_timeout = "20s"\n{tls}\n')


@pytest.fixture(scope="module")
def cloud_gw(standin: NeonStandIn) -> Iterator[PgGateway]:
    # verify-full against the stand-in's own CA: the real certificate check runs.
    backends = _cloud_backend(standin, f'tls = "verify-full"\nca_file = "{standin.cert_file}"')
    tenants = [Tenant(unique("ncl"), tier="free", backend="neon"),
               Tenant(unique("ncl"), tier="pro", backend="neon")]
    with pg_gateway(tenants, backends=backends) as gw:
        try:
            yield gw
        finally:
            gw.call(drop_neon(gw), timeout=120)


def _sql(gw: PgGateway, tenant: Tenant, sql: str, database: str = "main") -> str:
    out = gw.psql(tenant, "-c", sql, database=database)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _db(gw: PgGateway, tenant: Tenant, name: str = "main") -> DatabaseRecord:
    db = gw.call(gw.context.store.get_database(tenant.slug, name))
    assert db is not None
    return db


def _provision(gw: PgGateway, tenant: Tenant, name: str) -> DatabaseRecord:
    async def go() -> DatabaseRecord:
        store = gw.context.store
        record = await store.get_tenant(tenant.slug)
        backend = gw.backend("neon")
        up = await backend.provision(record, name, gw.context.directory.tier(record.tier))
        db = await store.put_database(DatabaseRecord(tenant.slug, name, "neon", "neon", up))
        gw.context.directory.invalidate(tenant.slug)
        return db
    return gw.call(go(), timeout=60)


def test_clients_reach_the_endpoint_named_in_the_startup_packet(cloud_gw, standin):
    gw = cloud_gw
    free, pro = gw.tenants
    _sql(gw, free, "CREATE TABLE t (v text); INSERT INTO t VALUES ('cloud')")
    assert _sql(gw, free, "SELECT v FROM t") == "cloud"
    db = _db(gw, free)
    up = db.upstream
    assert up["driver"] == "cloud" and up["endpoint_id"].startswith("ep-")
    assert standin.proxy_connections[up["endpoint_id"]] >= 1
    # suspend_timeout_seconds follows the tier's idle time (free 5 min; pro never).
    assert standin.endpoints[up["endpoint_id"]]["suspend_timeout_seconds"] == 300
    pro_ep = _db(gw, pro).upstream["endpoint_id"]
    assert standin.endpoints[pro_ep]["suspend_timeout_seconds"] == -1
    # Every created branch lives in the one platform project.
    assert _db(gw, pro).upstream["project_id"] == up["project_id"]
    storage = gw.call(gw.backend("neon").storage_bytes(db))
    assert storage is not None and storage > 1024 * 1024


def test_branch_reset_sleep_wake(cloud_gw, standin):
    gw = cloud_gw
    t = gw.tenants[1]
    backend = gw.backend("neon")
    _sql(gw, t, "CREATE TABLE b (n int); INSERT INTO b VALUES (1), (2)")

    async def branch() -> DatabaseRecord:
        store = gw.context.store
        record = await store.get_tenant(t.slug)
        parent = await store.get_database(t.slug, "main")
        up = await backend.branch(record, parent, "dev", gw.context.directory.tier(record.tier))
        db = await store.put_database(DatabaseRecord(t.slug, "dev", "neon", "neon", up))
        gw.context.directory.invalidate(t.slug)
        return db
    dev = gw.call(branch(), timeout=60)
    assert dev.upstream["parent"] == "main"
    assert standin.branches[dev.upstream["branch_id"]]["parent_id"] == \
        _db(gw, t).upstream["branch_id"]
    assert _sql(gw, t, "SELECT count(*) FROM b", database="dev") == "2"
    _sql(gw, t, "INSERT INTO b VALUES (3)", database="dev")
    assert _sql(gw, t, "SELECT count(*) FROM b") == "2"

    async def reset() -> None:
        record = await gw.context.store.get_tenant(t.slug)
        await backend.reset(record, await gw.context.store.get_database(t.slug, "dev"))
    gw.call(reset(), timeout=60)
    assert _sql(gw, t, "SELECT count(*) FROM b", database="dev") == "2"

    ep = dev.upstream["endpoint_id"]
    gw.call(backend.sleep(dev), timeout=60)
    assert standin.endpoints[ep]["current_state"] == "idle"
    wakes = standin.proxy_wakes
    gw.call(backend.wake(dev), timeout=60)
    assert standin.endpoints[ep]["current_state"] == "active"
    assert standin.count("POST", f"/endpoints/{ep}/start") == 1
    assert _sql(gw, t, "SELECT count(*) FROM b", database="dev") == "2"
    assert standin.proxy_wakes == wakes  # our wake, not the proxy's, started it


def test_423_and_503_are_retried(cloud_gw, standin):
    gw = cloud_gw
    api = gw.backend("neon").driver.api
    before = dict(api.retries)
    standin.inject(423, count=2)
    standin.inject(503)
    db = _provision(gw, gw.tenants[0], "retried")
    assert db.upstream["branch_id"] in standin.branches
    assert api.retries["423"] == before["423"] + 2
    assert api.retries["503"] == before["503"] + 1
    assert _sql(gw, gw.tenants[0], "SELECT 1", database="retried") == "1"


def test_429_waits_for_retry_after(cloud_gw, standin):
    gw = cloud_gw
    api = gw.backend("neon").driver.api
    before = api.retries["429"]
    standin.inject(429, retry_after=1)
    db = _provision(gw, gw.tenants[0], "limited")
    assert db.upstream["endpoint_id"] in standin.endpoints
    assert api.retries["429"] == before + 1


def test_failed_operation_fails_the_call(cloud_gw, standin):
    gw = cloud_gw
    standin.failing_actions.add("create_branch")
    try:
        with pytest.raises(CloudError, match=r"create_branch .* failed"):
            _provision(gw, gw.tenants[0], "doomed")
    finally:
        standin.failing_actions.discard("create_branch")


def test_upstream_connections_are_tls_and_cancels_reach_the_endpoint(cloud_gw, standin):
    gw = cloud_gw
    t = gw.tenants[0]
    assert _sql(gw, t, "SELECT 1") == "1"
    # Every upstream connection so far (pooled ones, the planner's) came over TLS.
    assert standin.tls_connections > 0 and standin.plain_refused == 0
    with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
        cancels = standin.cancels
        timer = threading.Timer(0.5, conn.cancel_safe)  # PQcancel would hold the GIL
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        assert standin.cancels == cancels + 1  # over TLS, to the endpoint's proxy
        assert conn.execute("SELECT 2").fetchone()[0] == 2


def test_an_untrusted_certificate_is_refused(standin):
    tenant = Tenant(unique("nct"), tier="free", backend="neon")
    with pg_gateway([tenant], backends=_cloud_backend(standin, "")) as gw:  # system CAs
        try:
            out = gw.psql(tenant, "-c", "SELECT 1")
            assert out.returncode != 0
            assert "certificate verify failed" in out.stderr, out.stderr
        finally:
            gw.call(drop_neon(gw), timeout=120)


def test_no_blind_repost_after_a_timeout(cloud_gw, standin):
    gw = cloud_gw
    posts = standin.count("POST", "/branches")
    standin.slow["POST branches"] = 3.0  # longer than request_timeout (2 s)
    db = _provision(gw, gw.tenants[0], "slowpoke")
    assert standin.count("POST", "/branches") == posts + 1  # found by reading back
    assert standin.branches[db.upstream["branch_id"]]["name"].endswith("slowpoke")


def test_api_rules_unit():
    assert suspend_timeout(None) == -1

    class T:
        idle_before_sleep = 2.0
    assert suspend_timeout(T()) == 60  # Neon's minimum
    T.idle_before_sleep = None
    assert suspend_timeout(T()) == -1

    async def go() -> None:
        import httpx

        calls = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request.method)
            if len(calls) == 1:
                return httpx.Response(423, json={"code": "", "message": "locked"})
            if request.url.path.endswith("/operations/op1"):
                return httpx.Response(200, json={"operation": {"id": "op1", "status": "error",
                                                               "action": "start_compute"}})
            return httpx.Response(200, json={"ok": True})
        api = NeonApi("http://x/api/v2", "k", request_timeout=1, retry_budget=5,
                      operation_timeout=5, transport=httpx.MockTransport(handler))
        assert await api.call("POST", "/projects/p/endpoints/e/start") == {"ok": True}
        with pytest.raises(CloudError, match="error"):
            await api.wait("p", [{"id": "op1", "status": "running", "action": "start_compute"}])
        await api.close()
    asyncio.run(go())
