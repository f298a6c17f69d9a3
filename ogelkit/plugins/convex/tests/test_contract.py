"""The front-door contract (ogelkit.testing.FrontDoorContract) for the Convex door, with the
sync protocol spoken by a plain WebSocket client (the ``convex`` client holds the GIL while
it waits, and the contract runs the gateway in a thread of the test process)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from convex_support import StandIn
from ogelkit_convex.errors import login_refusal
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from ogelkit.testing.frontdoor import PASSWORD, FrontDoorContract

CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000004",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}


@pytest.fixture(scope="module")
def deployment() -> Iterator[StandIn]:
    dep = StandIn("contract", "contract-admin-key").start()
    try:
        yield dep
    finally:
        dep.kill()


class TestConvexDoorContract(FrontDoorContract):
    protocol = "convex"
    shutdown_marker = "shutdown"

    @pytest.fixture(autouse=True)
    def _deployment(self, deployment: StandIn) -> None:
        type(self).backend = (f'type = "convex"\ndeployment_url = "{deployment.url}"\n'
                              f'admin_key = "{deployment.admin_key}"')

    @pytest.fixture
    def gw(self, _deployment: None) -> Any:
        yield from FrontDoorContract.gw.__wrapped__(self)  # type: ignore[attr-defined]

    @staticmethod
    def encode_reject(reject: Any) -> str:
        return json.dumps(login_refusal(reject))

    def _port(self, gw: Any) -> int:
        self._gw = gw
        return gw.port("http")

    def _token(self, user: str, password: str, database: str) -> str:
        """The contract speaks of passwords: the right one stands for the database's real
        platform token, any other for a token with that secret."""
        if password == PASSWORD:
            db = self._on_loop(self._gw, self._gw.context.store.get_database(user, database))
            if db is not None:
                return db.upstream["token"]
        return f"ogk_cvx.{user}.{database}.{password}"

    def _login(self, port: int, user: str, password: str, database: str) -> Any:
        ws = ws_connect(f"ws://127.0.0.1:{port}/api/sync", open_timeout=5).__enter__()
        ws.send(json.dumps(CONNECT))
        ws.send(json.dumps({"type": "Authenticate", "tokenType": "User", "baseVersion": 0,
                            "value": self._token(user, password, database)}))
        return ws

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        ws = self._login(port, user, password, database)
        try:
            ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                                "modifications": [{"type": "Add", "queryId": 0,
                                                   "udfPath": "misc:whoami", "args": [{}]}]}))
            while True:
                msg = json.loads(ws.recv(timeout=10))
                if msg["type"] in ("AuthError", "FatalError"):
                    return msg["error"]
                if msg["type"] == "Transition" and msg["modifications"]:
                    return "ok"
        except ConnectionClosed as exc:
            return f"closed {exc}"
        finally:
            ws.close()

    def hold_idle(self, port: int, user: str, password: str,
                  database: str) -> Callable[[], str]:
        ws = self._login(port, user, password, database)
        assert json.loads(ws.recv(timeout=10))["type"] == "Transition"

        def told() -> str:
            try:
                while True:
                    msg = json.loads(ws.recv(timeout=10))
                    if msg["type"] == "FatalError":
                        return msg["error"]
            except ConnectionClosed as exc:
                return f"closed without a message: {exc}"
            finally:
                ws.close()

        return told
