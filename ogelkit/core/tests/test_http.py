"""The HTTP side (Starlette on uvicorn in the gateway's loop): JSON errors, plugin routes and
WebSockets mounted through ``ogelkit_http_routes``, core routes not shadowable."""

import socket
import types

import httpx
import pytest
import websockets
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute

import ogelkit
from ogelkit.http import bind_sockets
from ogelkit.testing import isolated_plugins, minimal_config, running_gateway

pytestmark = pytest.mark.anyio


def _routes_plugin():
    async def hello(request):
        return PlainTextResponse(f"hello {request.headers.get('host')}")

    async def shadow(request):
        return PlainTextResponse("shadowed")

    async def echo(ws):
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text.upper())

    @ogelkit.hookimpl
    def ogelkit_http_routes(context):
        assert context.chain is not None
        return [Route("/hello", hello), Route("/healthz", shadow), WebSocketRoute("/echo", echo)]

    return types.SimpleNamespace(ogelkit_http_routes=ogelkit_http_routes)


async def test_plugin_routes_and_websockets_are_mounted_after_the_core():
    plugins = isolated_plugins(("routes", _routes_plugin()))
    async with running_gateway(minimal_config(), plugins=plugins) as gw, \
            httpx.AsyncClient(base_url=gw.url()) as http:
        r = await http.get("/hello")
        assert r.status_code == 200 and r.text.startswith("hello 127.0.0.1:")
        assert r.headers["server"] == "ogelkit"
        assert (await http.get("/healthz")).json()["status"] == "ok"  # not shadowed
        async with websockets.connect(f"ws://127.0.0.1:{gw.port('http')}/echo") as ws:
            await ws.send("abc")
            assert await ws.recv() == "ABC"


async def test_unknown_routes_and_methods_answer_json():
    async with running_gateway(minimal_config(), plugins=isolated_plugins()) as gw, \
            httpx.AsyncClient(base_url=gw.url()) as http:
        r = await http.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await http.post("/healthz")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_wildcard_host_binds_both_families_on_one_port():
    (sock,) = bind_sockets(None, 0)
    try:
        port = sock.getsockname()[1]
        families = [socket.AF_INET]
        if socket.has_dualstack_ipv6():
            families.append(socket.AF_INET6)
        for family in families:
            with socket.socket(family) as client:
                client.connect(("127.0.0.1" if family == socket.AF_INET else "::1", port))
    finally:
        sock.close()
