"""A STAND-IN for Neon's API v2 and proxy, for the cloud driver's tests (not Neon).

It follows the shapes of Neon's OpenAPI spec for the calls the driver makes (projects,
branches, endpoints, connection_uri, operations; ``GeneralError`` bodies) and plays the
rules the driver must cope with: every mutating call returns operations that are
``running`` on the first poll and ``finished`` (or ``failed``, when asked) later, and
faults can be injected (423/503/429 answers, a slow answer, a failing operation).

Data is real: each branch is a database on the test PostgreSQL (a branch is ``CREATE
DATABASE ... TEMPLATE <parent>``, which first ends the parent's sessions, unlike Neon),
each project a role. Its "proxy" is a TCP listener that, like Neon's, accepts only TLS
(SSLRequest, then a handshake with a self-signed certificate for 127.0.0.1 made at start:
``cert_file`` is its CA), finds the endpoint in ``options=endpoint=<id>`` of the startup
packet, wakes a suspended endpoint, relays to the branch's database, and passes
CancelRequests on to the server the cancel key belongs to.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _error(code: str, message: str, status: int, headers: dict[str, str] | None = None):
    return JSONResponse({"code": code, "message": message, "request_id": str(uuid.uuid4())},
                        status, headers=headers)


def _pg_error(code: str, message: str) -> bytes:
    body = b"".join(k + v.encode() + b"\0" for k, v in
                    ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


class NeonStandIn:
    def __init__(self, admin_dsn: str, api_key: str = "standin-key"):
        self.admin_dsn = admin_dsn
        u = urlsplit(admin_dsn)
        self.pg_host, self.pg_port = u.hostname or "127.0.0.1", u.port or 5432
        self.api_key = api_key
        self.projects: dict[str, dict[str, Any]] = {}
        self.branches: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, str]] = {}  # project -> role, password
        self.real_db: dict[str, str] = {}  # branch id -> database on the test PostgreSQL
        self.faults: collections.deque[tuple[int, dict[str, str]]] = collections.deque()
        self.failing_actions: set[str] = set()
        self.slow: dict[str, float] = {}  # "POST branches" -> seconds before answering
        # (the work is done at once; only the answer is late)
        self.answered: collections.Counter[int] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.proxy_connections: collections.Counter[str] = collections.Counter()
        self.proxy_wakes = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: uvicorn.Server | None = None
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.proxy_port = 0
        self.tls_connections = 0
        self.plain_refused = 0
        self.cancels = 0
        self._admin: asyncpg.Pool | None = None
        self._tls = self._self_signed()

    def _self_signed(self) -> ssl.SSLContext:
        """A server context with a fresh self-signed certificate for 127.0.0.1."""
        self.cert_dir = tempfile.mkdtemp(prefix="neon-standin-")
        self.cert_file = os.path.join(self.cert_dir, "cert.pem")
        key = os.path.join(self.cert_dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", key, "-out", self.cert_file, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, key)
        return ctx

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    # -- fault injection -------------------------------------------------------------------
    def inject(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """The next ``count`` mutating requests are answered with ``status``."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        for _ in range(count):
            self.faults.append((status, headers))

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))

    # -- running ---------------------------------------------------------------------------
    def start(self) -> NeonStandIn:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name="neon-standin")
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the Neon stand-in did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._cleanup(), self.loop).result(60)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(20)
        import shutil
        shutil.rmtree(self.cert_dir, ignore_errors=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._admin = await asyncpg.create_pool(self.admin_dsn, min_size=1, max_size=2)
        proxy = await asyncio.start_server(self._proxy, "127.0.0.1", 0)
        self.proxy_port = proxy.sockets[0].getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.loop.call_later(0.2, self._ready.set)
        async with proxy:
            await self._server.serve(sockets=[self._sock])
        await self._admin.close()

    async def _cleanup(self) -> None:
        assert self._admin is not None
        for db in list(self.real_db.values()):
            await self._admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for sec in self.secrets.values():
            await self._admin.execute(f'DROP ROLE IF EXISTS "{sec["role"]}"')
        self.real_db.clear()

    # -- the proxy -------------------------------------------------------------------------
    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code != 80877103:  # not an SSLRequest: Neon's proxy wants TLS
                self.plain_refused += 1
                writer.write(_pg_error("08P01", "connection is insecure (try using "
                                                "`sslmode=require`)"))
                await writer.drain()
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self._tls)
            self.tls_connections += 1
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code == 80877102:  # CancelRequest: to the server the key came from
                self.cancels += 1
                key = await reader.readexactly(8)
                _, cancel_writer = await asyncio.open_connection(self.pg_host, self.pg_port)
                cancel_writer.write(struct.pack("!ii", 16, code) + key)
                await cancel_writer.drain()
                cancel_writer.close()
                return
            body = await reader.readexactly(length - 8)
            parts = body.split(b"\0")
            params = {parts[i].decode(): parts[i + 1].decode()
                      for i in range(0, len(parts) - 1, 2) if parts[i]}
            ep_id = None
            for opt in params.pop("options", "").split():
                if opt.startswith("endpoint="):
                    ep_id = opt.split("=", 1)[1]
            ep = self.endpoints.get(ep_id or "")
            if ep is None:
                writer.write(_pg_error("08004", "Endpoint ID is not specified. Either please "
                                       "upgrade the postgres client library (libpq) for SNI "
                                       "support or pass the endpoint ID (first part of the "
                                       "domain name) as a parameter: '?options=endpoint%3D<id>'"))
                await writer.drain()
                return
            self.proxy_connections[ep["id"]] += 1
            if ep["current_state"] != "active":
                self.proxy_wakes += 1  # Neon's proxy wakes the compute on connect
                ep["current_state"] = "active"
            params["database"] = self.real_db[ep["branch_id"]]
            out = struct.pack("!i", 196608) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
            up_reader, up_writer = await asyncio.open_connection(self.pg_host, self.pg_port)
            up_writer.write(struct.pack("!i", len(out) + 4) + out)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                                 return_exceptions=True)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    # -- helpers ---------------------------------------------------------------------------
    def _op(self, project_id: str, action: str, branch_id: str | None = None,
            endpoint_id: str | None = None) -> dict[str, Any]:
        op = {"id": str(uuid.uuid4()), "project_id": project_id, "branch_id": branch_id,
              "endpoint_id": endpoint_id, "action": action, "status": "running",
              "failures_count": 0, "created_at": _now(), "updated_at": _now(),
              "total_duration_ms": 0, "_polls": 0}
        self.operations[op["id"]] = op
        return self._public(op)

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    async def _gate(self, request: Request) -> JSONResponse | None:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            self.answered[401] += 1
            return _error("", "authentication required", 401)
        if request.method != "GET" and self.faults:
            status, headers = self.faults.popleft()
            self.answered[status] += 1
            message = {423: "project already has running conflicting operations, scheduling "
                            "of new ones is prohibited",
                       429: "rate limit exceeded", 503: "service unavailable"}.get(status, "")
            return _error("", message, status, headers)
        self.answered[200] += 1
        return None

    async def _new_branch(self, pid: str, name: str, parent_id: str | None,
                          default: bool = False) -> dict[str, Any]:
        assert self._admin is not None
        bid = f"br-{secrets.token_hex(4)}-{secrets.randbelow(10**6):06d}"
        real = f"o7sneon_{bid.replace('-', '_')}"
        role = self.secrets[pid]["role"]
        if parent_id:
            parent_db = self.real_db[parent_id]
            await self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE datname = $1", parent_db)
            await self._admin.execute(f'CREATE DATABASE "{real}" TEMPLATE "{parent_db}" '
                                      f'OWNER "{role}"')
        else:
            await self._admin.execute(f'CREATE DATABASE "{real}" OWNER "{role}"')
        self.real_db[bid] = real
        branch = {"id": bid, "project_id": pid, "parent_id": parent_id, "name": name,
                  "current_state": "ready", "default": default, "protected": False,
                  "logical_size": 0, "created_at": _now(), "updated_at": _now()}
        self.branches[bid] = branch
        return branch

    def _new_endpoint(self, pid: str, bid: str, spec: dict[str, Any]) -> dict[str, Any]:
        eid = f"ep-{secrets.token_hex(4)}-{secrets.randbelow(10**6):06d}"
        ep = {"id": eid, "project_id": pid, "branch_id": bid,
              "host": f"{eid}.standin.local", "type": spec.get("type", "read_write"),
              "current_state": "active", "pending_state": None,
              "suspend_timeout_seconds": spec.get("suspend_timeout_seconds", 0),
              "autoscaling_limit_min_cu": spec.get("autoscaling_limit_min_cu", 0.25),
              "autoscaling_limit_max_cu": spec.get("autoscaling_limit_max_cu", 0.25),
              "pooler_enabled": False, "pooler_mode": "transaction", "disabled": False,
              "created_at": _now(), "updated_at": _now()}
        self.endpoints[eid] = ep
        return ep

    # -- routes ----------------------------------------------------------------------------
    def _app(self) -> Starlette:
        r = "/api/v2/projects"
        return Starlette(routes=[
            Route(r, self.list_projects, methods=["GET"]),
            Route(r, self.create_project, methods=["POST"]),
            Route(r + "/{pid}/branches", self.list_branches, methods=["GET"]),
            Route(r + "/{pid}/branches", self.create_branch, methods=["POST"]),
            Route(r + "/{pid}/branches/{bid}", self.get_branch, methods=["GET"]),
            Route(r + "/{pid}/branches/{bid}", self.delete_branch, methods=["DELETE"]),
            Route(r + "/{pid}/branches/{bid}/restore", self.restore_branch, methods=["POST"]),
            Route(r + "/{pid}/branches/{bid}/databases", self.list_databases, methods=["GET"]),
            Route(r + "/{pid}/endpoints", self.list_endpoints, methods=["GET"]),
            Route(r + "/{pid}/endpoints", self.create_endpoint, methods=["POST"]),
            Route(r + "/{pid}/endpoints/{eid}", self.update_endpoint, methods=["PATCH"]),
            Route(r + "/{pid}/endpoints/{eid}/start", self.start_endpoint, methods=["POST"]),
            Route(r + "/{pid}/endpoints/{eid}/suspend", self.suspend_endpoint, methods=["POST"]),
            Route(r + "/{pid}/connection_uri", self.connection_uri, methods=["GET"]),
            Route(r + "/{pid}/operations", self.list_operations, methods=["GET"]),
            Route(r + "/{pid}/operations/{oid}", self.get_operation, methods=["GET"]),
        ])

    async def list_projects(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        search = request.query_params.get("search", "")
        return JSONResponse({"projects": [p for p in self.projects.values()
                                          if search in p["name"]]})

    async def create_project(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        spec = (await request.json()).get("project", {})
        assert self._admin is not None
        pid = f"standin-{secrets.token_hex(4)}"
        role, password = f"o7sneon_{pid.replace('-', '_')}", secrets.token_urlsafe(12)
        await self._admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        self.secrets[pid] = {"role": role, "password": password}
        project = {"id": pid, "name": spec.get("name", pid), "region_id":
                   spec.get("region_id", "aws-us-east-2"), "pg_version": spec.get("pg_version", 15),
                   "default_endpoint_settings": spec.get("default_endpoint_settings", {}),
                   "created_at": _now(), "updated_at": _now()}
        self.projects[pid] = project
        branch = await self._new_branch(pid, "main", None, default=True)
        ep = self._new_endpoint(pid, branch["id"], {})
        ops = [self._op(pid, "create_timeline", branch["id"]),
               self._op(pid, "start_compute", branch["id"], ep["id"])]
        return JSONResponse({"project": project, "branch": branch, "endpoints": [ep],
                             "roles": [{"branch_id": branch["id"], "name": role}],
                             "databases": [{"branch_id": branch["id"], "name": "neondb",
                                            "owner_name": role}],
                             "operations": ops, "connection_uris": []}, 201)

    def _project(self, pid: str):
        return self.projects.get(pid)

    async def list_branches(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        if self._project(pid) is None:
            return _error("", "project not found", 404)
        search = request.query_params.get("search", "")
        return JSONResponse({"branches": [b for b in self.branches.values()
                                          if b["project_id"] == pid and search in b["name"]]})

    async def create_branch(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        if self._project(pid) is None:
            return _error("", "project not found", 404)
        body = await request.json()
        spec = body.get("branch", {})
        parent = spec.get("parent_id") or next(b["id"] for b in self.branches.values()
                                               if b["project_id"] == pid and b["default"])
        if parent not in self.branches:
            return _error("", "parent branch not found", 404)
        branch = await self._new_branch(pid, spec.get("name") or "branch", parent)
        eps = [self._new_endpoint(pid, branch["id"], e) for e in body.get("endpoints", [])]
        ops = [self._op(pid, "create_branch", branch["id"])]
        ops += [self._op(pid, "start_compute", branch["id"], e["id"]) for e in eps]
        delay = self.slow.pop("POST branches", 0.0)
        if delay:  # the branch exists, but the answer comes after the client gave up
            await asyncio.sleep(delay)
        return JSONResponse({"branch": branch, "endpoints": eps, "operations": ops,
                             "roles": [], "databases": [], "connection_uris": []}, 201)

    async def get_branch(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        branch = self.branches.get(request.path_params["bid"])
        if branch is None:
            return _error("", "branch not found", 404)
        assert self._admin is not None
        branch["logical_size"] = await self._admin.fetchval(
            "SELECT pg_database_size($1)", self.real_db[branch["id"]])
        return JSONResponse({"branch": branch})

    async def delete_branch(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid, bid = request.path_params["pid"], request.path_params["bid"]
        branch = self.branches.pop(bid, None)
        if branch is None:
            return _error("", "branch not found", 404)
        assert self._admin is not None
        await self._admin.execute(f'DROP DATABASE IF EXISTS "{self.real_db.pop(bid)}" '
                                  "WITH (FORCE)")
        for eid in [e for e, ep in self.endpoints.items() if ep["branch_id"] == bid]:
            del self.endpoints[eid]
        return JSONResponse({"branch": branch, "operations": [self._op(pid, "delete_timeline",
                                                                       bid)]})

    async def restore_branch(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid, bid = request.path_params["pid"], request.path_params["bid"]
        source = (await request.json()).get("source_branch_id")
        if bid not in self.branches or source not in self.branches:
            return _error("", "branch not found", 404)
        assert self._admin is not None
        real, src = self.real_db[bid], self.real_db[source]
        role = self.secrets[pid]["role"]
        await self._admin.execute(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)')
        await self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = $1", src)
        await self._admin.execute(f'CREATE DATABASE "{real}" TEMPLATE "{src}" OWNER "{role}"')
        return JSONResponse({"branch": self.branches[bid],
                             "operations": [self._op(pid, "restore_branch", bid)]})

    async def list_databases(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid, bid = request.path_params["pid"], request.path_params["bid"]
        return JSONResponse({"databases": [{"id": 1, "branch_id": bid, "name": "neondb",
                                            "owner_name": self.secrets[pid]["role"]}]})

    async def list_endpoints(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        return JSONResponse({"endpoints": [e for e in self.endpoints.values()
                                           if e["project_id"] == pid]})

    async def create_endpoint(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        spec = (await request.json()).get("endpoint", {})
        ep = self._new_endpoint(pid, spec["branch_id"], spec)
        return JSONResponse({"endpoint": ep, "operations": [
            self._op(pid, "start_compute", spec["branch_id"], ep["id"])]}, 201)

    def _endpoint(self, request: Request):
        return self.endpoints.get(request.path_params["eid"])

    async def update_endpoint(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        ep = self._endpoint(request)
        if ep is None:
            return _error("", "endpoint not found", 404)
        ep.update((await request.json()).get("endpoint", {}))
        return JSONResponse({"endpoint": ep, "operations": [
            self._op(ep["project_id"], "apply_config", ep["branch_id"], ep["id"])]})

    async def start_endpoint(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        ep = self._endpoint(request)
        if ep is None:
            return _error("", "endpoint not found", 404)
        ep["current_state"] = "active"
        return JSONResponse({"endpoint": ep, "operations": [
            self._op(ep["project_id"], "start_compute", ep["branch_id"], ep["id"])]})

    async def suspend_endpoint(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        ep = self._endpoint(request)
        if ep is None:
            return _error("", "endpoint not found", 404)
        ep["current_state"] = "idle"
        assert self._admin is not None
        await self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = $1", self.real_db[ep["branch_id"]])
        return JSONResponse({"endpoint": ep, "operations": [
            self._op(ep["project_id"], "suspend_compute", ep["branch_id"], ep["id"])]})

    async def connection_uri(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        q = request.query_params
        if "database_name" not in q or "role_name" not in q:
            return _error("", "database_name and role_name are required", 400)
        sec = self.secrets[pid]
        return JSONResponse({"uri": f"postgresql://{sec['role']}:{sec['password']}@127.0.0.1:"
                                    f"{self.proxy_port}/{q['database_name']}?sslmode=require"})

    async def list_operations(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        pid = request.path_params["pid"]
        return JSONResponse({"operations": [self._public(o) for o in self.operations.values()
                                            if o["project_id"] == pid]})

    async def get_operation(self, request: Request):
        if (bad := await self._gate(request)) is not None:
            return bad
        op = self.operations.get(request.path_params["oid"])
        if op is None:
            return _error("", "operation not found", 404)
        op["_polls"] += 1
        if op["status"] == "running" and op["_polls"] >= 2:
            if op["action"] in self.failing_actions:
                op["status"], op["error"] = "failed", "stand-in: injected failure"
                op["failures_count"] = 1
            else:
                op["status"] = "finished"
            op["updated_at"] = _now()
        return JSONResponse({"operation": self._public(op)})
