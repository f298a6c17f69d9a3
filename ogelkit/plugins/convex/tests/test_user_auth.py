"""End-user auth: a database whose deployment verifies its users' JWTs (``client_auth =
"user"``) gets the client's own Authenticate and Authorization, so functions see the user's
identity; the platform token still works (and is still swapped for the admin key)."""

from __future__ import annotations

import json
import socket

import convex
import httpx
import pytest
from convex_support import LAYERS, StandIn, bounded, convex_config, convex_gateway
from standin import make_jwt
from websockets.sync.client import connect as ws_connect

SECRET = "users-signing-secret"
ISSUER = "https://auth.example.test"
HOST = "main--ua.convex.localhost"
CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-0000000000aa",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}
ADD_IDENTITY = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
    {"type": "Add", "queryId": 0, "udfPath": "misc:identity", "args": [{}]}]}


@pytest.fixture(scope="module")
def gw():
    dep = StandIn("ua", "admin-key-of-ua", user_secret=SECRET).start()
    try:
        with convex_gateway(convex_config([dep], layers=LAYERS,
                                          backend_extra='client_auth = "user"')) as g:
            yield g
    finally:
        dep.kill()


def _first_result(ws):
    while True:
        msg = json.loads(ws.recv(timeout=10))
        if msg["type"] == "Transition" and msg["modifications"]:
            return msg["modifications"][0]
        assert msg["type"] in ("Transition", "Ping"), msg


def _socket(gw, auth: dict | None):
    # A socket to the gateway, and the tenant database's host name in the URI (so in Host):
    # such names do not resolve on this machine.
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    ws = ws_connect(f"ws://{HOST}:{gw.port}/api/sync", sock=sock, open_timeout=5).__enter__()
    ws.send(json.dumps(CONNECT))
    if auth is not None:
        ws.send(json.dumps({"type": "Authenticate", "baseVersion": 0, **auth}))
    return ws


def test_a_user_jwt_reaches_the_deployment_on_the_socket(gw):
    jwt = make_jwt(SECRET, ISSUER, "user-42")
    with _socket(gw, {"tokenType": "User", "value": jwt}) as ws:
        ws.send(json.dumps(ADD_IDENTITY))
        update = _first_result(ws)
        assert update["type"] == "QueryUpdated" and update["value"] == "user-42", update


def test_anonymous_clients_run_public_functions(gw):
    with _socket(gw, None) as ws:  # no Authenticate at all, as ConvexClient without auth
        ws.send(json.dumps(ADD_IDENTITY))
        update = _first_result(ws)
        assert update["type"] == "QueryUpdated" and update["value"] is None, update


def test_a_bad_user_jwt_gets_the_deployments_auth_error(gw):
    bad = make_jwt("not-the-secret", ISSUER, "mallory")
    with _socket(gw, {"tokenType": "User", "value": bad}) as ws:
        msg = json.loads(ws.recv(timeout=10))
        while msg["type"] == "Ping":
            msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "AuthError" and "verify" in msg["error"], msg


def test_an_admin_token_other_than_the_platform_token_is_refused(gw):
    with _socket(gw, {"tokenType": "Admin", "value": "admin-key-of-ua"}) as ws:
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "AuthError", msg


def test_http_passes_the_users_bearer_token(gw):
    jwt = make_jwt(SECRET, ISSUER, "user-7")
    with httpx.Client(timeout=10, headers={"host": HOST}) as http:
        r = http.post(gw.url("/api/query"), json={"path": "misc:identity", "args": {}},
                      headers={"authorization": f"Bearer {jwt}"})
        assert r.json() == {"status": "success", "value": "user-7"}, r.text
        r = http.post(gw.url("/api/query"), json={"path": "misc:identity", "args": {}})
        assert r.json() == {"status": "success", "value": None}
        bad = make_jwt("wrong", ISSUER, "x")
        r = http.post(gw.url("/api/query"), json={"path": "misc:identity", "args": {}},
                      headers={"authorization": f"Bearer {bad}"})
        assert r.status_code == 401
        # A deployment admin key is not relayed: only the platform token grants admin.
        r = http.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                      headers={"authorization": "Convex admin-key-of-ua"})
        assert r.status_code == 401


def test_without_host_routing_a_user_jwt_names_no_database(gw):
    jwt = make_jwt(SECRET, ISSUER, "user-9")
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:identity", "args": {}},
                   headers={"authorization": f"Bearer {jwt}"}, timeout=10)
    assert r.status_code == 401


def test_the_platform_token_still_works_with_the_real_client(gw):
    client = convex.ConvexClient(gw.url(""))
    client.set_admin_auth(gw.token("ua"))
    assert bounded(client.query, "misc:whoami") == "ua"
    assert bounded(client.query, "misc:identity") is None  # admin, not a user
