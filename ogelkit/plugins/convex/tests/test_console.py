"""Studio's function runner: the admin API's console calls a Convex function as the
tenant, through the layers, with the deployment's admin key."""

from __future__ import annotations

import httpx
from convex_support import LAYERS, convex_config, convex_gateway, standins

ADMIN = {"authorization": "Bearer test-admin-token"}


def test_function_runner_through_the_admin_api():
    with standins("fr") as deps, convex_gateway(convex_config(deps, layers=LAYERS)) as gw:
        path = gw.url("/admin/tenants/fr/databases/main/console")
        r = httpx.post(path, headers=ADMIN, timeout=20, json={
            "function": {"kind": "mutation", "path": "messages:send", "args": {"body": "hi"}}})
        assert r.status_code == 200, r.text
        assert r.json()["result"].startswith("fr-")
        r = httpx.post(path, headers=ADMIN, timeout=20, json={
            "function": {"kind": "query", "path": "messages:list", "args": {}}})
        assert r.json()["result"] == ["hi"]
        r = httpx.post(path, headers=ADMIN, timeout=20, json={
            "function": {"kind": "query", "path": "misc:fails", "args": {}}})
        assert r.status_code == 400 and "always fails" in r.json()["detail"]
        r = httpx.post(path, headers=ADMIN, timeout=20, json={"sql": "select 1"})
        assert r.status_code == 400 and r.json()["code"] == "bad_request"
        stats = httpx.get(gw.url("/admin/stats?tenant=fr"), headers=ADMIN, timeout=10).json()
        assert stats["operations"] >= 3
