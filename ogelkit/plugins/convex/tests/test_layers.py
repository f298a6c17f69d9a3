"""Layers per function call on the sync socket and the HTTP API: rate limit, cost classes,
timeouts, suspension, and the usage rows per udfPath."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from convex_support import LAYERS, client_process, convex_config, convex_gateway, standins
from ogelkit_convex import function_usage
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

TIERS = '''
[tiers.free]
ops_per_second = 2
burst = 2
statement_timeout = "1500ms"
cost_ceiling = 1000
'''
CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000001",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}


@pytest.fixture(scope="module")
def gw():
    with standins("lim") as deps, convex_gateway(convex_config(
            deps, tiers=TIERS, layers=LAYERS,
            backend_extra='function_costs = { "messages:clear" = 5000 }')) as g:
        yield g


def _socket(gw):
    ws = ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5).__enter__()
    ws.send(json.dumps(CONNECT))
    ws.send(json.dumps({"type": "Authenticate", "tokenType": "User", "value": gw.token("lim"),
                        "baseVersion": 0}))
    first = json.loads(ws.recv(timeout=10))
    assert first["type"] == "Transition", first
    return ws


def _until(ws, kind, request_id=None):
    while True:
        msg = json.loads(ws.recv(timeout=10))
        if msg["type"] == kind and (request_id is None or msg.get("requestId") == request_id):
            return msg


def test_rate_refusal_answers_in_protocol_and_the_socket_keeps_working(gw):
    time.sleep(1.5)
    with _socket(gw) as ws:
        for rid in range(6):
            ws.send(json.dumps({"type": "Mutation", "requestId": rid, "udfPath": "messages:send",
                                "args": [{"body": f"m{rid}"}]}))
        by_id = {}
        while len(by_id) < 6:
            msg = _until(ws, "MutationResponse")
            by_id[msg["requestId"]] = msg
        answers = list(by_id.values())
        refused = [a for a in answers if not a["success"]]
        assert refused, answers
        data = refused[0]["errorData"]
        assert data["reason"] == "rate" and data["tier"] == "free"
        assert data["retryAfter"] > 0 and data["hint"]
        time.sleep(1.5)
        ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                            "modifications": [{"type": "Add", "queryId": 0,
                                               "udfPath": "misc:whoami", "args": [{}]}]}))
        msg = _until(ws, "Transition")
        while not msg["modifications"]:
            msg = _until(ws, "Transition")
        assert msg["modifications"][0]["type"] == "QueryUpdated"
        assert msg["modifications"][0]["value"] == "lim"


def test_the_real_client_gets_convex_errors_and_goes_on(gw):
    time.sleep(1.5)
    code = '''
import time
from convex import ConvexError
reasons = []
for i in range(6):
    try:
        client.mutation("messages:send", {"body": str(i)})
    except ConvexError as exc:
        reasons.append(exc.data["reason"])
try:
    client.query("misc:whoami")
    client.query("misc:whoami")
    client.query("misc:whoami")
except ConvexError as exc:
    reasons.append("query:" + exc.data["reason"])
time.sleep(1.5)
print(sorted(set(reasons)), client.query("misc:whoami"))
'''
    out = client_process(gw.url(), gw.token("lim"), code, 30)
    assert out is not None, "the client hung on a refusal"
    assert "'rate'" in out and "lim" in out.splitlines()[-1], out


def test_cost_class_per_udfpath(gw):
    time.sleep(1.5)
    out = client_process(gw.url(), gw.token("lim"), '''
from convex import ConvexError
try:
    client.mutation("messages:clear")
except ConvexError as exc:
    print(exc.data["reason"])
''', 20)
    assert out is not None and out.strip() == "cost", out


def test_slow_action_times_out_with_the_tier_hint(gw):
    time.sleep(1.5)
    with _socket(gw) as ws:
        started = time.monotonic()
        ws.send(json.dumps({"type": "Action", "requestId": 0, "udfPath": "misc:slow",
                            "args": [{"seconds": 6}]}))
        answer = _until(ws, "ActionResponse", 0)
        assert not answer["success"] and answer["errorData"]["reason"] == "timeout"
        assert "free" in answer["errorData"]["detail"] and answer["errorData"]["hint"]
        assert time.monotonic() - started < 5.5
        ws.send(json.dumps({"type": "Action", "requestId": 1, "udfPath": "misc:echo",
                            "args": [{"value": "still here"}]}))
        assert _until(ws, "ActionResponse", 1)["result"] == "still here"
    time.sleep(1.0)
    r = httpx.post(gw.url("/api/action"), json={"path": "misc:slow", "args": {"seconds": 6}},
                   headers={"authorization": f"Bearer {gw.token('lim')}"}, timeout=20)
    assert r.status_code == 504 and r.json()["reason"] == "timeout", r.text


def test_http_refusals_carry_retry_after_and_ratelimit_headers(gw):
    time.sleep(1.5)
    auth = {"authorization": f"Bearer {gw.token('lim')}"}
    codes = []
    with httpx.Client(timeout=10) as http:
        for _ in range(8):
            r = http.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                          headers=auth)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert "remaining=0" in r.headers["ratelimit"]
                assert r.headers["ratelimit-policy"] == "2;w=1"
                assert r.json()["code"] == "RateLimited"
    assert 429 in codes and 200 in codes


def test_usage_rows_per_udfpath(gw):
    time.sleep(1.5)
    auth = {"authorization": f"Bearer {gw.token('lim')}"}
    httpx.post(gw.url("/api/mutation"), json={"path": "messages:send", "args": {"body": "u"}},
               headers=auth, timeout=10)
    deadline = time.monotonic() + 20
    while True:
        usage = gw.store_call(lambda store: function_usage(store, "lim"))
        rows = usage.get("main", {})
        if rows.get("messages:send", {}).get("calls", 0) >= 1 and "misc:whoami" in rows:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.5)
    assert rows["messages:send"]["bytes_in"] > 0 and rows["messages:send"]["duration"] > 0
    assert rows["misc:whoami"]["rejected"] >= 1  # the refusals above are counted too
    assert rows["misc:slow"]["calls"] >= 1


def test_suspended_tenant_is_refused(gw):
    admin = {"authorization": "Bearer test-admin-token"}
    r = httpx.patch(gw.url("/admin/tenants/lim"), json={"status": "suspended"}, headers=admin)
    assert r.status_code == 200
    try:
        r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                       headers={"authorization": f"Bearer {gw.token('lim')}"}, timeout=10)
        assert r.status_code == 403 and r.json()["code"] == "TenantSuspended"
        with ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5) as ws:
            ws.send(json.dumps(CONNECT))
            ws.send(json.dumps({"type": "Authenticate", "tokenType": "User",
                                "value": gw.token("lim"), "baseVersion": 0}))
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] == "FatalError" and "suspended" in msg["error"]
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
    finally:
        httpx.patch(gw.url("/admin/tenants/lim"), json={"status": "active"}, headers=admin)


def test_slow_query_times_out_on_the_socket_and_the_socket_goes_on(gw):
    time.sleep(1.5)
    with _socket(gw) as ws:
        started = time.monotonic()
        ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                            "modifications": [{"type": "Add", "queryId": 7,
                                               "udfPath": "misc:slowquery",
                                               "args": [{"seconds": 4}]}]}))
        msg = _until(ws, "Transition")
        while not msg["modifications"]:
            msg = _until(ws, "Transition")
        failed = msg["modifications"][0]
        assert failed["type"] == "QueryFailed" and failed["queryId"] == 7, msg
        assert failed["errorData"]["reason"] == "timeout" and failed["errorData"]["hint"]
        assert msg["startVersion"] == msg["endVersion"]  # the gateway's own Transition
        assert time.monotonic() - started < 3.5
        # The deployment's late answer (its Transition to querySet 1) carries no update of
        # the failed query, and the socket keeps working.
        late = _until(ws, "Transition")
        while late["endVersion"]["querySet"] < 1:
            late = _until(ws, "Transition")
        assert all(m.get("queryId") != 7 for m in late["modifications"]), late
        ws.send(json.dumps({"type": "Action", "requestId": 0, "udfPath": "misc:echo",
                            "args": [{"value": "after"}]}))
        assert _until(ws, "ActionResponse", 0)["result"] == "after"


def test_the_real_client_sees_a_query_timeout_as_convex_error(gw):
    time.sleep(1.5)
    out = client_process(gw.url(), gw.token("lim"), '''
from convex import ConvexError
try:
    client.query("misc:slowquery", {"seconds": 4})
    print("no error")
except ConvexError as exc:
    print(exc.data["reason"], exc.data["tier"])
import time
time.sleep(3)  # the stand-in runs one session's queries in turn: let the slow one end
print(client.query("misc:whoami"))
''', 30)
    assert out is not None, "the client hung on a query timeout"
    assert out.splitlines()[-2:] == ["timeout free", "lim"], out


def test_get_query_query_ts_and_query_at_ts(gw):
    time.sleep(1.5)
    auth = {"authorization": f"Bearer {gw.token('lim')}"}
    with httpx.Client(timeout=10) as http:
        r = http.get(gw.url("/api/query"), params={"path": "misc:whoami", "args": "{}"},
                     headers=auth)
        assert r.status_code == 200 and r.json() == {"status": "success", "value": "lim"}
        ts = http.get(gw.url("/api/query_ts"), headers=auth).json()["ts"]
        assert isinstance(ts, str) and len(ts) == 12  # base64 of a little-endian u64
        time.sleep(1.0)
        r = http.post(gw.url("/api/query_at_ts"), headers=auth,
                      json={"path": "misc:whoami", "args": {}, "ts": ts})
        assert r.json()["value"] == "lim"
        assert http.get(gw.url("/api/query_ts")).status_code == 401  # no token
        r = http.get(gw.url("/api/mutation"), headers=auth)
        assert r.status_code in (404, 405)


def test_query_batch_answers_refused_queries_in_place(gw):
    time.sleep(1.5)
    auth = {"authorization": f"Bearer {gw.token('lim')}"}
    queries = [{"path": "misc:whoami", "args": {}} for _ in range(4)]
    r = httpx.post(gw.url("/api/query_batch"), json={"queries": queries}, headers=auth,
                   timeout=10)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4
    ok = [x for x in results if x["status"] == "success"]
    refused = [x for x in results if x["status"] == "error"]
    assert ok and refused and all(x["value"] == "lim" for x in ok), results
    assert all(x["errorData"]["reason"] == "rate" for x in refused), results
    # Everything refused: 429 with Retry-After, so the client backs off.
    r = httpx.post(gw.url("/api/query_batch"), json={"queries": queries}, headers=auth,
                   timeout=10)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    r = httpx.post(gw.url("/api/query_batch"), json={"queries": 5}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "BadJsonBody"
