"""``ConvexBackend``: registers existing Convex deployments as tenant databases.

A tenant database of kind ``convex`` is a deployment URL, its admin (or deploy) key and a
platform token the gateway issued for it; the three are stored encrypted in the control
plane. Clients present the platform token; the gateway swaps it for the admin key.
"""

from __future__ import annotations

import hmac
from collections.abc import Hashable
from typing import Any

import httpx

import ogelkit
from ogelkit import Operation
from ogelkit_convex.management import DeploymentFactory, ManagementError
from ogelkit_convex.options import ConvexOptions
from ogelkit_convex.upstream import HttpUpstream
from ogelkit_convex.wire import canonical, new_token

#: Compared against when a token names no known database, so both answers take as long.
_DUMMY_TOKEN = new_token("x", "x")


class ConvexBackend(ogelkit.Backend):
    type_name = "convex"
    Config = ConvexOptions
    protocol = "convex"  # served on the gateway's HTTP port by ConvexDoor

    def __init__(self, config: ConvexOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.options: ConvexOptions = config
        self.http: httpx.AsyncClient | None = None  # readiness probes
        self.upstream = HttpUpstream(connect_timeout=config.connect_timeout)  # the HTTP API
        self.factory = DeploymentFactory(
            url=config.management_url, team_id=config.team_id,
            token_env=config.team_token_env, deployment_type=config.deployment_type,
            prefix=config.project_prefix, timeout=config.http_timeout) \
            if config.team_id else None

    async def open(self) -> None:
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.options.http_timeout, connect=self.options.connect_timeout),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        await self.upstream.close()

    async def check(self) -> None:
        """The default deployment answers HTTP (any status: it is up)."""
        url = self.options.deployment_url
        if not url or self.http is None:
            return
        await self.http.get(url.rstrip("/") + "/version", timeout=2.0)

    # -- provisioning ------------------------------------------------------------------------
    async def provision(self, tenant: Any, name: str, tier: Any, *,
                        deployment_url: str | None = None,
                        admin_key: str | None = None,
                        client_auth: str | None = None) -> dict[str, Any]:
        """Register an existing deployment (``--deployment-url``/``--admin-key``, or the
        backend's defaults) or, with ``team_id`` set and no URL given, create one through
        the Management API; then issue the database's platform token."""
        if client_auth not in (None, "platform", "user"):
            raise ValueError('--client-auth is "platform" or "user"')
        managed: dict[str, Any] | None = None
        if deployment_url is None and self.factory is not None:
            if admin_key is not None:
                raise ValueError("--admin-key goes with --deployment-url (a created "
                                 "deployment gets a deploy key of its own)")
            try:
                created = await self.factory.create(tenant.slug, name)
            except ManagementError as exc:
                raise ValueError(f"creating the Convex deployment failed: {exc}") from None
            deployment_url, admin_key = created["deployment_url"], created["admin_key"]
            managed = created["managed"]
        url = (deployment_url or self.options.deployment_url).rstrip("/")
        key = admin_key or self.options.admin_key
        if not url.startswith(("http://", "https://")):
            raise ValueError("a convex database needs --deployment-url http(s)://... (or the "
                             "backend's deployment_url option)")
        if not key:
            raise ValueError("a convex database needs --admin-key (or the backend's "
                             "admin_key option)")
        out: dict[str, Any] = {"deployment_url": url, "admin_key": key,
                               "token": new_token(tenant.slug, name)}
        if managed is not None:
            out["managed"] = managed
        if client_auth is not None:
            out["client_auth"] = client_auth
        return out

    async def deprovision(self, tenant: Any, db: Any) -> None:
        """Forget the registration. A deployment the gateway created (Management API) is
        deleted with its project; a registered one is left as it is."""
        managed = db.upstream.get("managed")
        if not managed:
            return
        factory = self.factory or DeploymentFactory(
            url=self.options.management_url, team_id=self.options.team_id,
            token_env=self.options.team_token_env, deployment_type=self.options.deployment_type,
            prefix=self.options.project_prefix, timeout=self.options.http_timeout)
        try:
            await factory.delete(managed)
        except ManagementError as exc:
            raise RuntimeError(f"deleting the Convex project {managed.get('project_id')} "
                               f"failed: {exc}") from None

    def connection_string(self, tenant: Any, db: Any, password: str | None, host: str,
                          port: int) -> str:
        http_port = self.context.config.listen.http if self.context is not None else port
        opts = self.options
        default = {"http": 80, "https": 443}.get(opts.public_scheme)
        suffix = "" if http_port in (default, 0) else f":{http_port}"
        routed = f"{opts.public_scheme}://{db.name}--{tenant.slug}.{opts.domain}{suffix}"
        plain = f"{opts.public_scheme}://{host}{suffix}"
        return (f"{routed} (or {plain}) with platform token {db.upstream.get('token', '?')} "
                "(client.set_auth(token))")

    # -- the platform token ------------------------------------------------------------------
    def user_auth(self, db: Any) -> bool:
        """True when the database passes clients' own Authenticate through (end-user auth)."""
        return (db.upstream.get("client_auth") or self.options.client_auth) == "user"

    @staticmethod
    def token_matches(db: Any, token: str) -> bool:
        expected = db.upstream.get("token", "") if db is not None else ""
        return hmac.compare_digest((expected or _DUMMY_TOKEN).encode(), token.encode()) and \
            bool(expected)

    # -- Studio's function runner ------------------------------------------------------------
    def console_operation(self, request: dict[str, Any]) -> tuple[str, str, str]:
        fn = request.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("path"), str) or \
                fn.get("kind") not in ("query", "mutation", "action") or ":" not in fn["path"]:
            raise ValueError('a Convex console request is {"function": {"kind": '
                             '"query|mutation|action", "path": "module:function", "args": {}}}')
        path = canonical(fn["path"])
        return fn["kind"], path, path

    async def console(self, db: Any, request: dict[str, Any], session: Any) -> dict[str, Any]:
        import json

        fn = request["function"]
        url = f"{db.upstream['deployment_url'].rstrip('/')}/api/{fn['kind']}"
        body = json.dumps({"path": canonical(fn["path"]), "args": fn.get("args") or {},
                           "format": "json"}).encode()
        status, _headers, content = await self.upstream.post(
            url, body, {"authorization": f"Convex {db.upstream['admin_key']}",
                        "content-type": "application/json"})
        try:
            answer = json.loads(content)
        except ValueError:
            raise ValueError(f"the deployment answered {status}: {content[:200]!r}") from None
        if status >= 400 or answer.get("status") == "error":
            raise ValueError(answer.get("errorMessage") or answer.get("message") or
                             f"the deployment answered {status}")
        return {"result": answer.get("value"), "command": f"{fn['kind']} {fn['path']}"}

    # -- cost classes ------------------------------------------------------------------------
    def cost_key(self, op: Operation) -> Hashable | None:
        return (op.kind, op.text)

    def function_cost(self, kind: str, path: str) -> float:
        opts = self.options
        cost = opts.function_costs.get(canonical(path))
        if cost is not None:
            return float(cost)
        if kind == "query":
            return opts.query_cost
        if kind == "mutation":
            return opts.mutation_cost
        return opts.action_cost

    async def estimate_cost(self, op: Operation) -> float | None:
        return self.function_cost(op.kind, op.text or "")
