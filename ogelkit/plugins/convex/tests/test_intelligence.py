"""The intelligence layer sees the door's refusals: wrong platform tokens ban the address."""

from __future__ import annotations

import json

import httpx
from convex_support import LAYERS, convex_config, convex_gateway, standins
from websockets.sync.client import connect as ws_connect

CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000003",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}
INTELLIGENCE = LAYERS + '''
[[layers]]
type = "intelligence"
auth_failures = 3
'''


def _login(gw, token: str) -> dict:
    with ws_connect(gw.url("/api/sync").replace("http", "ws"), open_timeout=5) as ws:
        ws.send(json.dumps(CONNECT))
        ws.send(json.dumps({"type": "Authenticate", "tokenType": "User", "value": token,
                            "baseVersion": 0}))
        return json.loads(ws.recv(timeout=10))


def test_wrong_tokens_get_the_address_banned():
    with standins("ban") as deps, convex_gateway(convex_config(deps, layers=INTELLIGENCE)) as gw:
        good = gw.token("ban")
        assert _login(gw, good)["type"] == "Transition"
        for _ in range(3):
            assert _login(gw, good[:-3] + "bad")["type"] == "AuthError"
        banned = _login(gw, good)
        assert banned["type"] == "FatalError" and banned["error"].startswith("banned:"), banned
        r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                       headers={"authorization": f"Bearer {good}"}, timeout=10)
        assert r.status_code == 429 and r.json()["reason"] == "banned"
        assert int(r.headers["retry-after"]) >= 1
