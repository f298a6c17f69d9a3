"""The admin API end to end against `ogelkit run`: onboarding a tenant through the API only
(tenant, password, database, psql connects), tenant tokens limited to their tenant, the
console through the layers, problem details, pagination and the OpenAPI document."""

from __future__ import annotations

import secrets
import subprocess
import time

import httpx

from .conftest import ADMIN_TOKEN


def _slug(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def test_onboarding_through_the_api_only(gw):
    slug = _slug("onb")
    r = gw.api("POST", "/admin/tenants", json={"slug": slug, "tier": "starter"})
    assert r.status_code == 201, r.text
    password = r.json()["password"]
    r = gw.api("POST", f"/admin/tenants/{slug}/databases", json={"name": "app", "kind": "postgres"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["password"] is None  # the tenant has its password already
    dsn = created["connection_string"]
    assert f":{gw.postgres}/" in dsn and slug in dsn
    # psql, the real client, with the connection string and the one-time password.
    out = subprocess.run(["psql", dsn.replace("<password>", password), "-XAtc",
                          "create table t(x int); insert into t values (41), (1); "
                          "select sum(x) from t"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "42", out.stderr
    r = gw.api("GET", f"/admin/tenants/{slug}/databases/app")
    assert r.status_code == 200 and r.json()["state"] in ("active", "idle")
    assert "password" not in r.text or "<password>" in r.json()["connection_string"]
    # A new password: the old one stops working, the new one works.
    new = gw.api("POST", f"/admin/tenants/{slug}/credentials").json()["password"]
    assert new != password
    bad = subprocess.run(["psql", dsn.replace("<password>", password), "-XAtc", "select 1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    ok = subprocess.run(["psql", dsn.replace("<password>", new), "-XAtc", "select 1"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert gw.api("DELETE", f"/admin/tenants/{slug}/databases/app").status_code == 204
    assert gw.api("GET", f"/admin/tenants/{slug}/databases/app").status_code == 404
    assert gw.api("DELETE", f"/admin/tenants/{slug}").status_code == 204


def _tenant_token(gw, slug: str, password: str) -> str:
    r = gw.api("POST", "/admin/login", token=None, json={"tenant": slug, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_a_tenant_token_sees_only_its_own_tenant(gw):
    one, two = _slug("own"), _slug("other")
    pw_one = gw.api("POST", "/admin/tenants", json={"slug": one}).json()["password"]
    pw_two = gw.api("POST", "/admin/tenants", json={"slug": two}).json()["password"]
    gw.api("POST", f"/admin/tenants/{two}/databases", json={"name": "secret", "kind": "redis"})
    token = _tenant_token(gw, one, pw_one)
    assert gw.api("GET", "/admin/whoami", token=token).json() == {"role": "tenant",
                                                                   "tenant": one}
    assert [t["slug"] for t in gw.api("GET", "/admin/tenants", token=token).json()["items"]] \
        == [one]
    assert gw.api("GET", f"/admin/tenants/{one}", token=token).status_code == 200
    # Another tenant's data looks exactly like a tenant that does not exist.
    for path in (f"/admin/tenants/{two}", f"/admin/tenants/{two}/databases",
                 f"/admin/tenants/{two}/databases/secret", f"/admin/tenants/{two}/usage"):
        r = gw.api("GET", path, token=token)
        assert r.status_code == 404 and r.headers["content-type"] == \
            "application/problem+json", (path, r.text)
    assert gw.api("POST", f"/admin/tenants/{two}/credentials", token=token).status_code == 404
    # Operator-only endpoints refuse a tenant token.
    r = gw.api("PATCH", f"/admin/tenants/{one}", token=token, json={"tier": "enterprise"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert gw.api("POST", "/admin/tenants", token=token, json={"slug": _slug("x")}
                  ).status_code == 403
    # Its audit view holds its own events only.
    gw.api("POST", "/admin/login", token=None, json={"tenant": two, "password": "wrong"})
    items = gw.api("GET", "/admin/audit", token=token).json()["items"]
    assert all(e.get("tenant") == one for e in items)
    # Rotating the password revokes the token; a wrong password gets no token.
    gw.api("POST", f"/admin/tenants/{one}/credentials")
    assert gw.api("GET", "/admin/whoami", token=token).status_code == 401
    r = gw.api("POST", "/admin/login", token=None, json={"tenant": one, "password": pw_one})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    unknown = gw.api("POST", "/admin/login", token=None,
                     json={"tenant": "no-such-tenant", "password": "x"})
    assert unknown.status_code == 401 and unknown.json()["detail"] == r.json()["detail"]
    assert _tenant_token(gw, two, pw_two)


def test_console_runs_through_the_layers_and_refusals_show_in_stats(gw):
    slug = _slug("con")
    password = gw.api("POST", "/admin/tenants", json={"slug": slug}).json()["password"]
    assert gw.api("POST", f"/admin/tenants/{slug}/databases",
                  json={"name": "main", "kind": "postgres"}).status_code == 201
    token = _tenant_token(gw, slug, password)
    path = f"/admin/tenants/{slug}/databases/main/console"
    r = gw.api("POST", path, token=token, json={"sql": "select 6 * 7 as answer, 'x' as s"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["answer", "s"] and body["rows"] == [[42, "x"]]
    r = gw.api("POST", path, token=token, json={"sql": "select * from no_such_table"})
    assert r.status_code == 400 and "42P01" in r.json()["detail"]
    time.sleep(1.1)
    codes = [gw.api("POST", path, token=token, json={"sql": "select 1"}).status_code
             for _ in range(8)]  # the free tier allows 3/s with a burst of 3
    assert 429 in codes and 200 in codes, codes
    refused = next(gw.api("POST", path, token=token, json={"sql": "select 1"})
                   for _ in range(5))
    if refused.status_code == 429:
        problem = refused.json()
        assert problem["reason"] == "rate" and problem["layer"] == "ratelimit"
        assert problem["tier"] == "free" and int(refused.headers["retry-after"]) >= 1
    stats = gw.api("GET", "/admin/stats", token=token).json()
    assert stats["operations"] >= 10
    assert any(r["layer"] == "ratelimit" and r["count"] >= 1 for r in stats["rejections"])
    recent = gw.api("GET", "/admin/decisions", token=token).json()["recent"]
    assert recent and all(e["tenant"] == slug for e in recent)
    # Redis and MongoDB consoles: the key browser and the collection browser.
    time.sleep(1.1)
    assert gw.api("POST", f"/admin/tenants/{slug}/databases",
                  json={"name": "kv", "kind": "redis"}).status_code == 201
    kv = f"/admin/tenants/{slug}/databases/kv/console"
    assert gw.api("POST", kv, json={"command": ["SET", "greeting", "hi"]}).json()["result"] == "OK"
    # One page over the whole shared server (other tests' keys may be there): COUNT big.
    _, keys = gw.api("POST", kv, json={"command": ["SCAN", "0", "MATCH", "*", "COUNT",
                                                     "10000000"]}).json()["result"]
    assert keys == ["greeting"]  # the namespace prefix is not shown
    value = gw.api("POST", kv, json={"command": ["DUMPVALUE", "greeting"]}).json()["result"]
    assert value == {"type": "string", "value": "hi"}
    r = gw.api("POST", kv, json={"command": ["FLUSHALL"]})
    assert r.status_code == 400
    time.sleep(1.1)
    assert gw.api("POST", f"/admin/tenants/{slug}/databases",
                  json={"name": "docs", "kind": "mongodb"}).status_code == 201
    docs = f"/admin/tenants/{slug}/databases/docs/console"
    r = gw.api("POST", docs, json={"document": {"listCollections": 1}})
    assert r.status_code == 200 and r.json()["columns"] == ["name"], r.text


def test_problem_details_pagination_and_openapi(gw):
    r = gw.api("GET", "/admin/tenants", token=None)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"].endswith("/unauthorized") and problem["status"] == 401
    assert problem["title"] and problem["detail"] and problem["instance"] == "/admin/tenants"
    assert "bearer" in r.headers["www-authenticate"].lower()
    r = gw.api("POST", "/admin/tenants", json={"slug": "Not A Slug", "bogus": 1})
    assert r.status_code == 400 and len(r.json()["errors"]) == 2
    r = gw.api("POST", "/admin/tenants", content=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == "bad_json"
    assert gw.api("GET", "/admin/nothing").json()["code"] == "not_found"
    assert gw.api("PUT", "/admin/tenants").status_code == 405
    for _ in range(3):
        gw.api("POST", "/admin/tenants", json={"slug": _slug("page")})
    seen, cursor = [], None
    while True:
        page = gw.api("GET", "/admin/tenants", params={"limit": 2, **(
            {"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [t["slug"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 3
    assert gw.api("GET", "/admin/tenants", params={"limit": 0}).status_code == 400
    doc = httpx.get(gw.url("/admin/openapi.json"), timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert "/admin/tenants/{slug}/databases/{db}/console" in doc["paths"]
    assert "/admin/tenants/{slug}/advice" in doc["paths"]  # the intelligence plugin's
    ops = [op for item in doc["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    # The document names this gateway's backend kinds and backends; a well-formed request
    # naming one it does not have refers to nothing: 404, like a missing tenant.
    create = doc["paths"]["/admin/tenants/{slug}/databases"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(body["kind"]["enum"]) == {"postgres", "redis", "mongodb"}, body["kind"]
    assert len(body["backend"]["enum"]) == 3
    slug = gw.api("GET", "/admin/tenants").json()["items"][0]["slug"]
    missing = gw.api("POST", f"/admin/tenants/{slug}/databases",
                     json={"name": "nope", "kind": "postgres", "backend": "no-such"})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found", missing.text
    assert gw.api("GET", "/admin/whoami", token=ADMIN_TOKEN).json()["role"] == "operator"
