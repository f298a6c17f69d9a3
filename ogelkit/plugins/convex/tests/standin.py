"""A STAND-IN Convex deployment for tests and benchmarks (not Convex, not the gateway).

A real Convex backend cannot be built on these machines (its V8 dependency downloads a
prebuilt library), so the tests run the gateway against this small server. It implements the
documented parts of a deployment that clients use:

- the WebSocket sync protocol on ``/api/sync`` (convex-js ``protocol.ts``; convex-rs
  ``base_client``): ``Connect``, ``Authenticate`` (admin key only), ``ModifyQuerySet`` with
  per-session versions ``{querySet, identity, ts}``, a ``Transition`` whose ``startVersion``
  is always the last ``endVersion`` sent, ``MutationResponse`` with ``ts`` followed by a
  ``Transition`` whose ``endVersion.ts`` reaches it (re-running every subscribed query of
  every session), ``ActionResponse``, ``AuthError``, ``FatalError`` and a ``Ping`` every
  ``--ping`` seconds (the client gives up on a silent server after 30 s);
- the HTTP API: ``POST /api/query|mutation|action|function`` (``{path, args, format}``) and
  ``POST /api/run/<module>/<function>`` (``{args}``), answering 200 with ``status:
  success|error``, and non-2xx ``{code, message}`` for infrastructure errors.

Also ``GET /api/query`` (``?path=&args=<JSON>``), ``GET /api/query_ts`` (``{ts}``),
``POST /api/query_at_ts`` and ``POST /api/query_batch`` (``{queries}`` -> ``{results}``).

Every function needs the deployment's admin key (``Authorization: Convex <key>`` or
``Authenticate{tokenType: "Admin"}``), so the tests prove the gateway swaps platform tokens
for it, unless the deployment is configured for end-user auth (``--user-secret``): then it
also runs functions for a user who presents a JWT it can verify (``Authorization: Bearer
<jwt>`` or ``Authenticate{tokenType: "User"}``; HS256 with that secret, ``iss`` =
``--user-issuer``, ``exp`` in the future), and for anonymous clients, as a deployment whose
``auth.config`` lists an identity provider does. ``misc:identity`` answers the caller's
``sub`` (``ctx.auth.getUserIdentity()``), or null.

The functions are plain Python (below). Run ``python standin.py --port 0 --name N
--admin-key K``: it prints ``READY <port>`` once it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

DEBUG = bool(os.environ.get("STANDIN_DEBUG"))


def encode_ts(ts: int) -> str:
    return base64.b64encode(struct.pack("<Q", ts)).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(secret: str, issuer: str, subject: str, lifetime: float = 3600.0) -> str:
    """An HS256 JWT the stand-in verifies (tests sign their users' tokens with it)."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps({"iss": issuer, "sub": subject, "aud": "convex",
                               "exp": int(time.time() + lifetime)}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


class FunctionError(Exception):
    def __init__(self, message: str, data: Any = None):
        super().__init__(message)
        self.data = data


class Deployment:
    """One deployment: its tables, functions, timestamp and live sync sessions."""

    def __init__(self, name: str, admin_key: str, ping: float = 10.0, user_secret: str = "",
                 user_issuer: str = "https://auth.example.test"):
        self.name = name
        self.admin_keys = {admin_key}  # deploy keys minted by the management stand-in join
        self.ping = ping
        self.user_secret = user_secret  # end-user auth configured (auth.config)
        self.user_issuer = user_issuer
        self.ts = 1_000
        self.messages: list[str] = []
        self.sessions: set[SyncSession] = set()
        self.calls: list[str] = []  # udfPaths run, in order (for tests)
        self.queries: dict[str, Callable[[dict[str, Any]], Any]] = {
            "messages:list": lambda a: list(self.messages),
            "messages:count": lambda a: float(len(self.messages)),
            "misc:whoami": lambda a: self.name,
            "misc:fails": self._fails,
            "misc:slowquery": lambda a: "done",  # its ModifyQuerySet waits a["seconds"]
            "misc:identity": lambda a: None,  # answered per caller, see identity_of
        }
        self.mutations: dict[str, Callable[[dict[str, Any]], Any]] = {
            "messages:send": self._send,
            "messages:clear": self._clear,
            "misc:fails": self._fails,
        }
        self.actions: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "misc:echo": self._echo,
            "misc:slow": self._slow,
        }

    # -- the test functions ------------------------------------------------------------------
    def _send(self, args: dict[str, Any]) -> Any:
        body = args.get("body")
        if not isinstance(body, str):
            raise FunctionError("body must be a string", {"field": "body"})
        self.messages.append(body)
        return f"{self.name}-{len(self.messages)}"

    def _clear(self, args: dict[str, Any]) -> Any:
        self.messages.clear()
        return None

    def _fails(self, args: dict[str, Any]) -> Any:
        raise FunctionError("this function always fails", {"why": "test"})

    async def _echo(self, args: dict[str, Any]) -> Any:
        return args.get("value")

    async def _slow(self, args: dict[str, Any]) -> Any:
        await asyncio.sleep(float(args.get("seconds", 1.0)))
        return "done"

    # -- end-user auth -----------------------------------------------------------------------
    def verify_user(self, token: str) -> str | None:
        """The ``sub`` of a valid user JWT, or None (no user auth configured, or invalid)."""
        if not self.user_secret:
            return None
        try:
            head, body, sig = token.split(".")
            want = hmac.new(self.user_secret.encode(), f"{head}.{body}".encode(),
                            hashlib.sha256).digest()
            claims = json.loads(_unb64url(body))
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(want, _unb64url(sig)):
            return None
        if claims.get("iss") != self.user_issuer or float(claims.get("exp", 0)) < time.time():
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) else None

    def may_run(self, admin: bool) -> bool:
        """Public functions run for admins, and for anyone once end-user auth is set up."""
        return admin or bool(self.user_secret)

    # -- running them ------------------------------------------------------------------------
    @staticmethod
    def canonical(path: str) -> str:
        module, _, fn = path.partition(":")
        if module.endswith(".js"):
            module = module[:-3]
        return f"{module}:{fn or 'default'}"

    def run_query(self, path: str, args: dict[str, Any], user: str | None = None) -> Any:
        path = self.canonical(path)
        fn = self.queries.get(path)
        if fn is None:
            raise FunctionError(f"Could not find public function for '{path}'")
        if path == "misc:identity":
            return user
        return fn(args)

    async def run(self, kind: str, path: str, args: dict[str, Any], user: str | None = None
                  ) -> Any:
        """Run a function of ``kind`` (query, mutation, action; or any for /api/function)."""
        path = self.canonical(path)
        self.calls.append(path)
        if kind in ("query", "any") and path in self.queries and (
                kind == "query" or path not in self.mutations):
            if path == "misc:slowquery":
                await asyncio.sleep(float(args.get("seconds", 1.0)))
            return self.run_query(path, args, user)
        if kind in ("mutation", "any") and path in self.mutations:
            result = self.mutations[path](args)
            self.ts += 1
            await self.broadcast()
            return result
        if kind in ("action", "any") and path in self.actions:
            return await self.actions[path](args)
        raise FunctionError(f"Could not find public function for '{path}'")

    async def broadcast(self) -> None:
        """Every session: a Transition to the new ts with its queries re-run."""
        for session in list(self.sessions):
            try:
                await session.transition(rerun=True)
            except Exception:
                pass

    # -- HTTP API ------------------------------------------------------------------------------
    def _http_caller(self, request: Request) -> tuple[bool, str | None] | JSONResponse:
        """(admin, user subject) of an HTTP request, or its 401."""
        auth = request.headers.get("authorization", "")
        if auth.startswith("Convex ") and auth[7:] in self.admin_keys:
            return True, None
        if auth.startswith("Bearer ") and self.user_secret:
            user = self.verify_user(auth[7:].strip())
            if user is None:
                return JSONResponse({"code": "NoAuthProvider", "message":
                                     "stand-in: Could not verify the OIDC token"}, 401)
            return False, user
        if not auth and self.user_secret:
            return False, None  # anonymous
        return JSONResponse({"code": "Unauthenticated",
                             "message": "stand-in: the admin key is required"}, 401)

    @staticmethod
    def _result(value: Any = None, exc: FunctionError | None = None) -> dict[str, Any]:
        if exc is None:
            return {"status": "success", "value": value}
        out: dict[str, Any] = {"status": "error", "errorMessage": str(exc)}
        if exc.data is not None:
            out["errorData"] = exc.data
        return out

    async def _call(self, kind: str, path: str, args: Any, user: str | None) -> dict[str, Any]:
        if isinstance(args, list):
            args = args[0] if args else {}
        try:
            return self._result(await self.run(kind, path, args or {}, user))
        except FunctionError as exc:
            return self._result(exc=exc)

    async def http(self, request: Request) -> JSONResponse:
        caller = self._http_caller(request)
        if isinstance(caller, JSONResponse):
            return caller
        _admin, user = caller
        route = request.path_params.get("kind", "")
        if request.method == "GET":
            if route == "query_ts":
                return JSONResponse({"ts": encode_ts(self.ts)})
            try:
                args = json.loads(request.query_params.get("args", "{}"))
            except ValueError:
                return JSONResponse({"code": "BadJsonBody", "message": "args is not JSON"}, 400)
            return JSONResponse(await self._call("query", request.query_params.get("path", ""),
                                                 args, user))
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"code": "BadJsonBody", "message": "not JSON"}, 400)
        if request.url.path.startswith("/api/run/"):
            parts = request.path_params["rest"].strip("/").split("/")
            path, kind, args = "/".join(parts[:-1]) + ":" + parts[-1], "any", body.get("args", {})
        elif route == "query_batch":
            return JSONResponse({"results": [
                await self._call("query", q.get("path", ""), q.get("args", {}), user)
                for q in body.get("queries", [])]})
        else:
            kind = {"function": "any", "query_at_ts": "query"}.get(route, route)
            path, args = body.get("path", ""), body.get("args", {})
        return JSONResponse(await self._call(kind, path, args, user))

    async def version(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("standin-0.0.0")

    def app(self) -> Starlette:
        return Starlette(routes=[
            WebSocketRoute("/api/sync", self.sync),
            Route("/version", self.version),
            Route("/api/run/{rest:path}", self.http, methods=["POST"]),
            Route("/api/{kind:str}", self.http, methods=["GET", "POST"]),
        ])

    async def sync(self, ws: WebSocket) -> None:
        await ws.accept()
        session = SyncSession(self, ws)
        self.sessions.add(session)
        pinger = asyncio.create_task(session.pings())
        try:
            await session.serve()
        except WebSocketDisconnect:
            pass
        finally:
            pinger.cancel()
            self.sessions.discard(session)


class SyncSession:
    """One client of ``/api/sync``: versions, live queries, message order."""

    def __init__(self, deployment: Deployment, ws: WebSocket):
        self.d = deployment
        self.ws = ws
        self.query_set = 0
        self.identity = 0
        self.ts = 0  # a new client starts at {querySet: 0, identity: 0, ts: 0}
        self.admin = False
        self.user: str | None = None  # the verified JWT's sub (end-user auth)
        self.queries: dict[int, tuple[str, dict[str, Any]]] = {}
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()

    def version(self) -> dict[str, Any]:
        return {"querySet": self.query_set, "identity": self.identity, "ts": encode_ts(self.ts)}

    async def send(self, msg: dict[str, Any]) -> None:
        if DEBUG:
            print(">>", msg, file=sys.stderr, flush=True)
        await self.ws.send_text(json.dumps(msg))

    async def pings(self) -> None:
        while True:
            await asyncio.sleep(self.d.ping)
            async with self.lock:
                await self.send({"type": "Ping"})

    def _evaluate(self, query_id: int) -> dict[str, Any]:
        path, args = self.queries[query_id]
        if not self.d.may_run(self.admin):
            return {"type": "QueryFailed", "queryId": query_id, "logLines": [],
                    "errorMessage": "stand-in: Unauthenticated (the admin key is required)"}
        try:
            value = self.d.run_query(path, args, self.user)
        except FunctionError as exc:
            out = {"type": "QueryFailed", "queryId": query_id, "errorMessage": str(exc),
                   "logLines": []}
            if exc.data is not None:
                out["errorData"] = exc.data
            return out
        return {"type": "QueryUpdated", "queryId": query_id, "value": value, "logLines": []}

    async def transition(self, *, rerun: bool = False, query_set: int | None = None,
                         identity: int | None = None,
                         modifications: list[dict[str, Any]] | None = None) -> None:
        async with self.lock:
            start = self.version()
            if query_set is not None:
                self.query_set = query_set
            if identity is not None:
                self.identity = identity
            self.ts = max(self.ts, self.d.ts)
            mods = list(modifications or [])
            if rerun:
                touched = {m.get("queryId") for m in mods}
                mods += [self._evaluate(q) for q in self.queries if q not in touched]
            await self.send({"type": "Transition", "startVersion": start,
                             "endVersion": self.version(), "modifications": mods})

    async def serve(self) -> None:
        while True:
            msg = json.loads(await self.ws.receive_text())
            if DEBUG:
                print("<<", msg, file=sys.stderr, flush=True)
            kind = msg.get("type")
            if kind == "Connect":
                continue
            if kind == "Authenticate":
                token_type, value = msg.get("tokenType"), msg.get("value")
                user = self.d.verify_user(value or "") if token_type == "User" else None
                if (token_type == "Admin" and value in self.d.admin_keys) or user is not None or \
                        (token_type == "None" and self.d.user_secret):
                    self.admin, self.user = token_type == "Admin", user
                    await self.transition(identity=int(msg.get("baseVersion", 0)) + 1,
                                          rerun=True)
                else:
                    async with self.lock:
                        await self.send({"type": "AuthError", "baseVersion":
                                         msg.get("baseVersion", 0),
                                         "error": "stand-in: Could not verify the token "
                                                  "(admin key or, with end-user auth, a "
                                                  "valid user JWT)"})
                    await self.ws.close(1008)
                    return
            elif kind == "ModifyQuerySet":
                if msg.get("baseVersion") != self.query_set:
                    async with self.lock:
                        await self.send({"type": "FatalError",
                                         "error": "stand-in: ModifyQuerySet baseVersion mismatch"})
                    await self.ws.close(1011)
                    return
                mods = []
                for m in msg.get("modifications", []):
                    if m.get("type") == "Add":
                        args = m.get("args") or [{}]
                        if Deployment.canonical(m["udfPath"]) == "misc:slowquery":
                            await asyncio.sleep(float((args[0] or {}).get("seconds", 1.0)))
                        self.queries[m["queryId"]] = (m["udfPath"], args[0] if args else {})
                        self.d.calls.append(Deployment.canonical(m["udfPath"]))
                        mods.append(self._evaluate(m["queryId"]))
                    elif m.get("type") == "Remove" and \
                            self.queries.pop(m["queryId"], None) is not None:
                        mods.append({"type": "QueryRemoved", "queryId": m["queryId"]})
                await self.transition(query_set=msg["newVersion"], modifications=mods)
            elif kind == "Mutation":
                await self._mutation(msg)
            elif kind == "Action":
                task = asyncio.create_task(self._action(msg))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _args(self, msg: dict[str, Any]) -> dict[str, Any]:
        args = msg.get("args") or [{}]
        return args[0] if isinstance(args, list) and args else {}

    async def _mutation(self, msg: dict[str, Any]) -> None:
        rid = msg["requestId"]
        if not self.d.may_run(self.admin):
            async with self.lock:
                await self.send({"type": "MutationResponse", "requestId": rid, "success": False,
                                 "result": "stand-in: Unauthenticated", "logLines": []})
            return
        path = Deployment.canonical(msg["udfPath"])
        fn = self.d.mutations.get(path)
        self.d.calls.append(path)
        try:
            if fn is None:
                raise FunctionError(f"Could not find public function for '{path}'")
            result = fn(self._args(msg))
        except FunctionError as exc:
            out = {"type": "MutationResponse", "requestId": rid, "success": False,
                   "result": str(exc), "logLines": []}
            if exc.data is not None:
                out["errorData"] = exc.data
            async with self.lock:
                await self.send(out)
            return
        self.d.ts += 1
        async with self.lock:
            await self.send({"type": "MutationResponse", "requestId": rid, "success": True,
                             "result": result, "ts": encode_ts(self.d.ts), "logLines": []})
        await self.d.broadcast()  # this session's Transition reaches the mutation's ts

    async def _action(self, msg: dict[str, Any]) -> None:
        rid = msg["requestId"]
        out: dict[str, Any]
        path = Deployment.canonical(msg["udfPath"])
        self.d.calls.append(path)
        fn = self.d.actions.get(path)
        try:
            if not self.d.may_run(self.admin):
                raise FunctionError("stand-in: Unauthenticated")
            if fn is None:
                raise FunctionError(f"Could not find public function for '{path}'")
            result = await fn(self._args(msg))
            out = {"type": "ActionResponse", "requestId": rid, "success": True,
                   "result": result, "logLines": []}
        except FunctionError as exc:
            out = {"type": "ActionResponse", "requestId": rid, "success": False,
                   "result": str(exc), "logLines": []}
            if exc.data is not None:
                out["errorData"] = exc.data
        try:
            async with self.lock:
                await self.send(out)
        except Exception:
            pass


class Management:
    """A STAND-IN for Convex's Management API v1 (docs.convex.dev/management-api): team
    access tokens as Bearer, ``list_projects``, ``create_project`` (which starts a real
    stand-in deployment in this process, on a port of its own), ``create_deploy_key``,
    ``list_deployments``, ``projects/{id}/delete`` (which stops it) and ``token_details``."""

    def __init__(self, team_id: int, token: str):
        self.team_id = team_id
        self.token = token
        self.next_id = 100
        self.projects: dict[int, dict[str, Any]] = {}
        self.servers: dict[int, Any] = {}
        self.deployments: dict[str, Deployment] = {}

    def _auth(self, request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"code": "Unauthenticated",
                                 "message": "stand-in: invalid team access token"}, 401)
        return None

    def _team(self, request: Request) -> JSONResponse | None:
        if str(request.path_params["team_id"]) != str(self.team_id):
            return JSONResponse({"code": "TeamNotFound", "message": "stand-in: no such team"},
                                404)
        return None

    async def list_projects(self, request: Request) -> JSONResponse:
        refused = self._auth(request) or self._team(request)
        if refused:
            return refused
        return JSONResponse([{k: p[k] for k in ("id", "name", "slug", "teamId", "createTime")}
                             for p in self.projects.values()])

    async def create_project(self, request: Request) -> JSONResponse:
        refused = self._auth(request) or self._team(request)
        if refused:
            return refused
        try:
            body = json.loads(await request.body())
            name, kind = body["projectName"], body["deploymentType"]
            assert kind in ("dev", "prod") and isinstance(name, str)
        except (ValueError, KeyError, AssertionError, TypeError):
            return JSONResponse({"code": "BadRequest", "message": "stand-in: projectName and "
                                 "deploymentType (dev|prod) are required"}, 400)
        pid = self.next_id
        self.next_id += 1
        dep_name = f"standin-{pid}"
        deployment = Deployment(dep_name, f"{kind}:{dep_name}|bootstrap-{os.urandom(6).hex()}")
        port = await self._start(pid, deployment)
        self.deployments[dep_name] = deployment
        self.projects[pid] = {"id": pid, "name": name, "slug": name.lower().replace(" ", "-"),
                              "teamId": self.team_id, "createTime": int(time.time() * 1000),
                              "deployments": [{"name": dep_name, "deploymentType": kind,
                                               "projectId": pid,
                                               "createTime": int(time.time() * 1000)}]}
        return JSONResponse({"projectId": pid, "deploymentName": dep_name,
                             "deploymentUrl": f"http://127.0.0.1:{port}"})

    async def list_deployments(self, request: Request) -> JSONResponse:
        refused = self._auth(request)
        if refused:
            return refused
        project = self.projects.get(int(request.path_params["project_id"]))
        if project is None:
            return JSONResponse({"code": "ProjectNotFound", "message": "stand-in"}, 404)
        return JSONResponse(project["deployments"])

    async def create_deploy_key(self, request: Request) -> JSONResponse:
        refused = self._auth(request)
        if refused:
            return refused
        deployment = self.deployments.get(request.path_params["name"])
        if deployment is None:
            return JSONResponse({"code": "DeploymentNotFound", "message": "stand-in"}, 404)
        key = f"prod:{deployment.name}|{os.urandom(12).hex()}"
        deployment.admin_keys.add(key)
        return JSONResponse({"deployKey": key})

    async def delete_project(self, request: Request) -> JSONResponse:
        refused = self._auth(request)
        if refused:
            return refused
        pid = int(request.path_params["project_id"])
        project = self.projects.pop(pid, None)
        if project is None:
            return JSONResponse({"code": "ProjectNotFound", "message": "stand-in"}, 404)
        for dep in project["deployments"]:
            self.deployments.pop(dep["name"], None)
        server = self.servers.pop(pid, None)
        if server is not None:
            server.should_exit = True
        return JSONResponse(None)

    async def token_details(self, request: Request) -> JSONResponse:
        refused = self._auth(request)
        if refused:
            return refused
        return JSONResponse({"type": "teamToken", "teamId": self.team_id, "name": "stand-in",
                             "createTime": 0})

    async def _start(self, pid: int, deployment: Deployment) -> int:
        server, sock = _server(deployment.app(), 0)
        self.servers[pid] = server
        task = asyncio.create_task(server.serve(sockets=[sock]))
        task.add_done_callback(lambda _t: sock.close())
        return sock.getsockname()[1]

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/teams/{team_id}/list_projects", self.list_projects),
            Route("/v1/teams/{team_id}/create_project", self.create_project, methods=["POST"]),
            Route("/v1/projects/{project_id:int}/list_deployments", self.list_deployments),
            Route("/v1/projects/{project_id:int}/delete", self.delete_project,
                  methods=["POST"]),
            Route("/v1/deployments/{name}/create_deploy_key", self.create_deploy_key,
                  methods=["POST"]),
            Route("/v1/token_details", self.token_details),
        ])


def _server(app: Starlette, port: int, host: str = "127.0.0.1") -> tuple[Any, Any]:
    import socket

    import uvicorn

    sock = socket.create_server((host, port))
    config = uvicorn.Config(app, lifespan="off", log_level="warning",
                            ws="websockets-sansio", http="httptools")
    server = uvicorn.Server(config)
    return server, sock


async def serve(app: Starlette, port: int) -> None:
    server, sock = _server(app, port)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await server.serve(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="standin")
    parser.add_argument("--admin-key", default="standin-admin-key")
    parser.add_argument("--ping", type=float, default=10.0)
    parser.add_argument("--user-secret", default="",
                        help="enable end-user auth: HS256 secret of the users' JWTs")
    parser.add_argument("--user-issuer", default="https://auth.example.test")
    parser.add_argument("--management", action="store_true",
                        help="serve the Management API stand-in instead of a deployment")
    parser.add_argument("--team-id", type=int, default=1)
    parser.add_argument("--team-token", default="standin-team-token")
    ns = parser.parse_args(argv)
    app = Management(ns.team_id, ns.team_token).app() if ns.management else Deployment(
        ns.name, ns.admin_key, ns.ping, ns.user_secret, ns.user_issuer).app()
    try:  # uvloop sets TCP_NODELAY on accepted sockets (plain asyncio here costs 40 ms
        import uvloop  # of delayed ACK per keep-alive HTTP request)

        uvloop.run(serve(app, ns.port))
    except ImportError:
        asyncio.run(serve(app, ns.port))


if __name__ == "__main__":
    sys.exit(main())
