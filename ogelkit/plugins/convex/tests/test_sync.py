"""The unmodified ``convex`` clients through the gateway, in front of stand-in deployments."""

from __future__ import annotations

import json
import time

import convex
import httpx
import pytest
from convex.http_client import ConvexHttpClient
from convex_support import LAYERS, bounded, client_process, convex_config, convex_gateway, standins
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000000",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}
ADD_WHOAMI = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
    {"type": "Add", "queryId": 0, "udfPath": "misc:whoami", "args": [{}]}]}


@pytest.fixture(scope="module")
def setup():
    with standins("acme", "beta") as deps, \
            convex_gateway(convex_config(deps, layers=LAYERS)) as gw:
        yield gw, deps


def client_for(gw, tenant: str) -> convex.ConvexClient:
    client = convex.ConvexClient(gw.url("").rstrip("/"))
    client.set_auth(gw.token(tenant))
    return client


def test_query_mutation_action_through_the_gateway(setup):
    gw, _ = setup
    client = client_for(gw, "acme")
    assert bounded(client.query, "misc:whoami") == "acme"
    before = bounded(client.query, "messages:count")
    assert bounded(client.mutation, "messages:send", {"body": "hello"}).startswith("acme-")
    assert bounded(client.query, "messages:count") == before + 1
    assert bounded(client.action, "misc:echo", {"value": "x"}) == "x"


def test_set_admin_auth_with_the_platform_token_works_too(setup):
    gw, _ = setup
    client = convex.ConvexClient(gw.url("").rstrip("/"))
    client.set_admin_auth(gw.token("acme"))
    assert bounded(client.query, "misc:whoami") == "acme"


def test_two_tenants_with_same_named_functions_are_isolated(setup):
    gw, _ = setup
    a, b = client_for(gw, "acme"), client_for(gw, "beta")
    assert bounded(a.query, "misc:whoami") == "acme"
    assert bounded(b.query, "misc:whoami") == "beta"
    bounded(b.mutation, "messages:clear")
    bounded(a.mutation, "messages:send", {"body": "only-acme"})
    assert "only-acme" not in bounded(b.query, "messages:list")


def test_live_subscription_sees_another_clients_mutation(setup):
    gw, _ = setup
    watcher, writer = client_for(gw, "acme"), client_for(gw, "acme")
    sub = watcher.subscribe("messages:list")
    first = bounded(next, sub)
    bounded(writer.mutation, "messages:send", {"body": "pushed"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        value = bounded(next, sub)
        if value.count("pushed") > first.count("pushed"):
            break
    else:
        pytest.fail("the subscription never saw the mutation")
    sub.unsubscribe()


def test_wrong_or_missing_token_is_an_auth_error(setup):
    gw, _ = setup
    bad = gw.token("acme")[:-4] + "nope"
    # The real client restarts the protocol after AuthError and never gets data.
    assert client_process(gw.url(), bad, "print(client.query('misc:whoami'))", 4) is None
    for token in (bad, None):
        with ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5) as ws:
            ws.send(json.dumps(CONNECT))
            if token:
                ws.send(json.dumps({"type": "Authenticate", "tokenType": "User",
                                    "value": token, "baseVersion": 0}))
            else:
                ws.send(json.dumps(ADD_WHOAMI))
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] == "AuthError", msg
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)


def test_http_api_with_httpx_and_the_legacy_client(setup):
    gw, _ = setup
    token = gw.token("acme")
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                   headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "success", "value": "acme"}
    r = httpx.post(gw.url("/api/run/misc/whoami"), json={"args": {}},
                   headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.json()["value"] == "acme"
    # Host routing: <db>--<tenant>.<domain>, the token must still match.
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                   headers={"authorization": f"Bearer {gw.token('beta')}",
                            "host": "main--beta.convex.localhost"}, timeout=10)
    assert r.json()["value"] == "beta"
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                   headers={"authorization": f"Bearer {token}",
                            "host": "main--beta.convex.localhost"}, timeout=10)
    assert r.status_code == 401
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "Unauthenticated"
    legacy = ConvexHttpClient(gw.url("").rstrip("/"))
    legacy.set_auth(token)
    assert legacy.query("misc:whoami") == "acme"
    assert legacy.mutation("messages:send", {"body": "via-http"}).startswith("acme-")
    assert legacy.action("misc:echo", {"value": "y"}) == "y"


@pytest.mark.parametrize("frames", [
    ["not json"],
    ["[1, 2]"],
    [json.dumps(CONNECT), "{"],
    [json.dumps(CONNECT), json.dumps({"type": "Authenticate", "tokenType": "User",
                                      "value": 5, "baseVersion": "x"})],
])
def test_malformed_handshake_is_answered_in_protocol(setup, frames):
    gw, _ = setup
    with ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5) as ws:
        for frame in frames:
            ws.send(frame)
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] in ("AuthError", "FatalError"), msg
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


@pytest.mark.parametrize("frame", [
    "not json", "[]", '{"type": "ModifyQuerySet", "modifications": "x"}',
    '{"type": "Mutation", "udfPath": 5, "requestId": 0}',
    '{"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [7]}',
])
def test_malformed_message_after_login_ends_only_that_socket(setup, frame):
    gw, _ = setup
    with ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5) as ws:
        ws.send(json.dumps(CONNECT))
        ws.send(json.dumps({"type": "Authenticate", "tokenType": "User",
                            "value": gw.token("acme"), "baseVersion": 0}))
        assert json.loads(ws.recv(timeout=10))["type"] == "Transition"
        ws.send(frame)
        while True:
            try:
                msg = json.loads(ws.recv(timeout=10))
            except ConnectionClosed:
                break
            if msg["type"] == "FatalError":
                assert "malformed" in msg["error"]
    assert bounded(client_for(gw, "beta").query, "misc:whoami") == "beta"
    assert "Traceback" not in gw.proc.log() and "never retrieved" not in gw.proc.log()
