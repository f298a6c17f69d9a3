"""Many sockets, the gatekeeper counting them, and a deployment that dies mid-subscription."""

from __future__ import annotations

import asyncio
import json
import time

import convex
import httpx
import pytest
import websockets
from convex_support import LAYERS, bounded, convex_config, convex_gateway, standins

TIERS = '''
[tiers.free]
connections = 200
ops_per_second = 100000
burst = 10000
'''
CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000002",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}


@pytest.fixture(scope="module")
def setup():
    with standins("many", "doomed") as deps, \
            convex_gateway(convex_config(deps, tiers=TIERS, layers=LAYERS)) as gw:
        yield gw, deps


async def _open(url: str, token: str) -> tuple[object, dict]:
    ws = await websockets.connect(url, open_timeout=30, max_queue=64)
    await ws.send(json.dumps(CONNECT))
    await ws.send(json.dumps({"type": "Authenticate", "tokenType": "User", "value": token,
                              "baseVersion": 0}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))


async def _subscribe(ws) -> object:
    await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                              "modifications": [{"type": "Add", "queryId": 0,
                                                 "udfPath": "misc:whoami", "args": [{}]}]}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if msg["type"] == "Transition" and msg["modifications"]:
            return msg["modifications"][0]["value"]


def test_200_concurrent_sockets_and_the_gatekeeper_counts_them(setup):
    gw, _ = setup
    url = gw.url("/api/sync").replace("http", "ws")
    token = gw.token("many")

    async def main():
        opened = await asyncio.gather(*[_open(url, token) for _ in range(200)])
        sockets = [ws for ws, _ in opened]
        try:
            assert all(first["type"] == "Transition" for _, first in opened)
            values = await asyncio.gather(*[_subscribe(ws) for ws in sockets])
            assert values == ["many"] * 200
            extra, first = await _open(url, token)  # the 201st is over the tier's cap
            assert first["type"] == "FatalError" and "connections" in first["error"], first
            await extra.close()
        finally:
            await asyncio.gather(*[ws.close() for ws in sockets])

    asyncio.run(asyncio.wait_for(main(), 120))


def test_deployment_killed_mid_subscription(setup):
    gw, deps = setup
    doomed = deps[1]
    url = gw.url("/api/sync").replace("http", "ws")
    token = gw.token("doomed")

    async def main():
        ws, _ = await _open(url, token)
        assert await _subscribe(ws) == "doomed"
        doomed.kill()
        started = time.monotonic()
        error = None
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if msg["type"] == "FatalError":
                    error = msg["error"]
        except websockets.ConnectionClosed:
            pass
        assert error is not None and "unavailable" in error
        assert time.monotonic() - started < 20
        again, first = await _open(url, token)  # reconnecting: refused in protocol
        assert first["type"] == "FatalError" and "unavailable" in first["error"], first
        await again.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    r = httpx.post(gw.url("/api/query"), json={"path": "misc:whoami", "args": {}},
                   headers={"authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 503 and r.json()["code"] == "Unavailable"
    # The other tenant is still served, over both paths.
    client = convex.ConvexClient(gw.url())
    client.set_auth(gw.token("many"))
    assert bounded(client.query, "misc:whoami") == "many"
    assert httpx.get(gw.url("/healthz"), timeout=10).status_code == 200


def test_sigterm_closes_idle_sockets_with_a_shutdown_error():
    import signal

    with standins("drain") as deps, convex_gateway(convex_config(deps, layers=LAYERS)) as gw:
        url = gw.url("/api/sync").replace("http", "ws")
        token = gw.token("drain")

        async def main():
            ws, _ = await _open(url, token)
            assert await _subscribe(ws) == "drain"
            gw.proc.signal(signal.SIGTERM)
            error = None
            try:
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    if msg["type"] == "FatalError":
                        error = msg["error"]
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1012
            assert error is not None and error.startswith("shutdown:")

        asyncio.run(asyncio.wait_for(main(), 60))
        assert gw.proc.wait(30) == 0
