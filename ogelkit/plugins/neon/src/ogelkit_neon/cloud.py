"""The ``cloud`` driver: branches and endpoints through Neon's API v2.

Every tenant database is a branch with one read-write endpoint (compute), in one platform
project or in a project of its own tenant. Each mutating call returns ``operations``; the
driver polls each one until it is ``finished`` and fails on ``failed``, ``error``,
``cancelled`` or ``skipped``. ``423 Locked`` and ``503`` answers are retried as sent (Neon
documents both as safe), ``429`` after ``Retry-After`` (or an exponential back-off). A
POST or PATCH whose answer never came is *not* sent again: the driver reads the state
back (is the branch there?) and goes on from what it finds.

Upstream connections name the endpoint in the startup packet (``options=endpoint=<id>``),
which Neon's proxy reads when there is no SNI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Tier
    from ogelkit_neon.backend import NeonBackend
    from ogelkit_neon.options import CloudOptions

log = logging.getLogger("ogelkit.neon")

FAILED = frozenset({"failed", "error", "cancelled", "skipped"})
RETRY_STATUSES = frozenset({423, 503})


class CloudError(Exception):
    """Neon's API refused a call, an operation failed, or the API was unreachable."""

    def __init__(self, message: str, sqlstate: str = "08006", status: int | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.status = status


class CloudUnanswered(CloudError):
    """A mutating request got no answer (timeout, connection lost): it may have happened."""


def suspend_timeout(tier: Tier | None) -> int:
    """Neon's ``suspend_timeout_seconds`` for a tier: -1 = never, otherwise 60 s-7 days."""
    idle = None if tier is None else tier.idle_before_sleep
    if idle is None:
        return -1
    return max(60, min(604800, int(idle)))


def _retry_after(resp: httpx.Response, fallback: float) -> float:
    value = resp.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    return fallback


class NeonApi:
    """A small client of Neon's API v2 with its retry rules."""

    def __init__(self, base_url: str, api_key: str, *, request_timeout: float,
                 retry_budget: float, operation_timeout: float,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=request_timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                     "User-Agent": "ogelkit-neon"})
        self.retry_budget = retry_budget
        self.operation_timeout = operation_timeout
        self.retries = {"423": 0, "503": 0, "429": 0, "network": 0}

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, Any] | None = None, ok404: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_budget
        delay = 0.1
        safe = method in ("GET", "HEAD", "OPTIONS")
        while True:
            try:
                resp = await self.http.request(method, path, json=json, params=params)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if not safe:
                    raise CloudUnanswered(f"{method} {path}: no answer ({exc!r})") from None
                if time.monotonic() + delay > deadline:
                    raise CloudError(f"{method} {path}: Neon's API unreachable: {exc!r}") from None
                self.retries["network"] += 1
            else:
                code = resp.status_code
                if code < 300:
                    return resp.json() if resp.content else {}
                if code == 404 and ok404:
                    return {}
                if code in RETRY_STATUSES or code == 429:
                    wait = _retry_after(resp, delay) if code == 429 else delay
                    if time.monotonic() + wait > deadline:
                        raise CloudError(f"{method} {path}: still {code} after "
                                         f"{self.retry_budget:g}s: {_message(resp)}",
                                         "53300" if code == 429 else "08006", code)
                    self.retries[str(code)] += 1
                    log.info("neon API answered %s, retrying in %.2fs", code, wait,
                             extra={"path": path})
                    await asyncio.sleep(wait)
                    delay = min(5.0, delay * 1.6)
                    continue
                raise CloudError(f"{method} {path}: {code} {_message(resp)}", "08006", code)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 1.6)

    async def wait(self, project_id: str, operations: list[dict[str, Any]] | None) -> None:
        """Poll every operation until it is finished; raise when one fails."""
        deadline = time.monotonic() + self.operation_timeout
        for op in operations or []:
            status = op.get("status")
            delay = 0.05
            while status != "finished":
                if status in FAILED:
                    raise CloudError(f"Neon operation {op.get('action')} {op.get('id')} "
                                     f"{status}: {op.get('error') or 'no detail'}")
                if time.monotonic() > deadline:
                    raise CloudError(f"Neon operation {op.get('action')} {op.get('id')} still "
                                     f"{status} after {self.operation_timeout:g}s")
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 1.5)
                body = await self.call("GET", f"/projects/{project_id}/operations/{op['id']}")
                op = body.get("operation", op)
                status = op.get("status")


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return str(body.get("message") or body)[:300]


class CloudDriver:
    def __init__(self, backend: NeonBackend, options: CloudOptions):
        self.backend = backend
        self.opts = options
        self.api: NeonApi | None = None
        self._projects: dict[str, dict[str, Any]] = {}  # project key -> id, template branch
        self._project_lock = asyncio.Lock()
        self.tls: ssl.SSLContext | None = self._tls_context()

    def _tls_context(self) -> ssl.SSLContext:
        """TLS for upstream connections (Neon's proxy requires it; SNI names the endpoint)."""
        ctx = ssl.create_default_context(cafile=self.opts.ca_file or None)
        if self.opts.tls == "require":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        key = os.environ.get(self.opts.api_key_env)
        if not key:
            raise CloudError(f"the Neon API key is not set: export {self.opts.api_key_env}")
        self.api = NeonApi(self.opts.api_url, key, request_timeout=self.opts.request_timeout,
                           retry_budget=self.opts.retry_budget,
                           operation_timeout=self.opts.operation_timeout)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()

    async def check(self) -> None:
        await self._api.call("GET", "/projects", params={"limit": 1})

    @property
    def _api(self) -> NeonApi:
        if self.api is None:
            raise CloudError("the cloud driver is not open")
        return self.api

    # -- projects --------------------------------------------------------------------------
    async def _project(self, tenant: str) -> dict[str, Any]:
        """``{id, template_branch, role, database}`` of the project tenant databases live in."""
        per_tenant = self.opts.project == "tenant"
        key = tenant if per_tenant else ""
        async with self._project_lock:
            cached = self._projects.get(key)
            if cached is not None:
                return cached
            api = self._api
            name = f"{self.opts.project_name}-{tenant}" if per_tenant else self.opts.project_name
            pid = None if per_tenant else self.opts.project_id
            if pid is None:
                found = await api.call("GET", "/projects", params={"search": name})
                for p in found.get("projects", []):
                    if p.get("name") == name:
                        pid = p["id"]
                        break
            if pid is None:
                try:
                    body = await api.call("POST", "/projects", json={"project": {
                        "name": name, "region_id": self.opts.region_id,
                        "pg_version": self.opts.pg_version,
                        "default_endpoint_settings": {
                            "autoscaling_limit_min_cu": self.opts.autoscaling_min_cu,
                            "autoscaling_limit_max_cu": self.opts.autoscaling_max_cu}}})
                except CloudUnanswered:
                    raise CloudError(f"creating project {name} got no answer; rerun to pick "
                                     "it up (it is looked up by name first)") from None
                pid = body["project"]["id"]
                await api.wait(pid, body.get("operations"))
                log.info("created neon project", extra={"project": pid, "project_name": name})
            branches = (await api.call("GET", f"/projects/{pid}/branches")).get("branches", [])
            default = next((b for b in branches if b.get("default")), None) \
                or next((b for b in branches if not b.get("parent_id")), None)
            if default is None:
                raise CloudError(f"project {pid} has no default branch")
            dbs = (await api.call("GET", f"/projects/{pid}/branches/{default['id']}/databases")
                   ).get("databases", [])
            if not dbs:
                raise CloudError(f"the default branch of project {pid} has no database")
            db = dbs[0]
            info = {"id": pid, "template_branch": default["id"], "database": db["name"],
                    "role": db["owner_name"]}
            self._projects[key] = info
            return info

    # -- branches --------------------------------------------------------------------------
    def _branch_name(self, tenant: str, name: str) -> str:
        return name if self.opts.project == "tenant" else f"o7s-{tenant}-{name}"

    async def _find_branch(self, pid: str, name: str) -> dict[str, Any] | None:
        body = await self._api.call("GET", f"/projects/{pid}/branches", params={"search": name})
        return next((b for b in body.get("branches", []) if b.get("name") == name), None)

    async def _make_branch(self, tenant: str, name: str, parent_id: str | None,
                           parent_name: str | None, tier: Tier | None) -> dict[str, Any]:
        api = self._api
        project = await self._project(tenant)
        pid = project["id"]
        bname = self._branch_name(tenant, name)
        branch = await self._find_branch(pid, bname)
        if branch is None:
            try:
                body = await api.call("POST", f"/projects/{pid}/branches", json={
                    "branch": {"name": bname,
                               "parent_id": parent_id or project["template_branch"]},
                    "endpoints": [{"type": "read_write",
                                   "suspend_timeout_seconds": suspend_timeout(tier),
                                   "autoscaling_limit_min_cu": self.opts.autoscaling_min_cu,
                                   "autoscaling_limit_max_cu": self.opts.autoscaling_max_cu}]})
            except CloudUnanswered:
                # Never re-POST blindly: read back whether the branch came to be.
                branch = await self._find_branch(pid, bname)
                if branch is None:
                    raise CloudError(f"creating branch {bname} got no answer and it does not "
                                     "exist; rerun to try again") from None
                ops = (await api.call("GET", f"/projects/{pid}/operations",
                                      params={"limit": 20})).get("operations", [])
                await api.wait(pid, [o for o in ops if o.get("branch_id") == branch["id"]
                                     and o.get("status") != "finished"])
            else:
                branch = body["branch"]
                await api.wait(pid, body.get("operations"))
        endpoint = await self._endpoint_of(pid, branch["id"], tier)
        uri = (await api.call("GET", f"/projects/{pid}/connection_uri", params={
            "branch_id": branch["id"], "endpoint_id": endpoint["id"],
            "database_name": project["database"], "role_name": project["role"]}))["uri"]
        u = urlsplit(uri)
        return {"driver": "cloud", "project_id": pid, "branch_id": branch["id"],
                "branch_name": bname, "endpoint_id": endpoint["id"], "parent": parent_name,
                "host": u.hostname, "port": u.port or 5432,
                "role": unquote(u.username or project["role"]),
                "password": unquote(u.password or ""),
                "dbname": unquote(u.path.lstrip("/")) or project["database"]}

    async def _endpoint_of(self, pid: str, branch_id: str, tier: Tier | None) -> dict[str, Any]:
        api = self._api
        eps = (await api.call("GET", f"/projects/{pid}/endpoints")).get("endpoints", [])
        for ep in eps:
            if ep.get("branch_id") == branch_id and ep.get("type") == "read_write":
                return ep
        body = await api.call("POST", f"/projects/{pid}/endpoints", json={"endpoint": {
            "branch_id": branch_id, "type": "read_write",
            "suspend_timeout_seconds": suspend_timeout(tier)}})
        await api.wait(pid, body.get("operations"))
        return body["endpoint"]

    # -- the driver interface --------------------------------------------------------------
    async def provision(self, tenant: str, name: str, tier: Tier, role: str, dbname: str,
                        password: str) -> dict[str, Any]:
        return await self._make_branch(tenant, name, None, None, tier)

    async def branch(self, parent_db: DatabaseRecord, name: str,
                     tier: Tier | None = None) -> dict[str, Any]:
        return await self._make_branch(parent_db.tenant, name, parent_db.upstream["branch_id"],
                                       parent_db.name, tier)

    async def reset(self, db: DatabaseRecord, parent_db: DatabaseRecord) -> None:
        up = db.upstream
        pid = up["project_id"]
        body = await self._api.call(
            "POST", f"/projects/{pid}/branches/{up['branch_id']}/restore",
            json={"source_branch_id": parent_db.upstream["branch_id"]})
        await self._api.wait(pid, body.get("operations"))

    async def drop(self, db: DatabaseRecord) -> None:
        up = db.upstream
        if not up.get("branch_id"):
            return
        pid = up["project_id"]
        body = await self._api.call("DELETE", f"/projects/{pid}/branches/{up['branch_id']}",
                                    ok404=True)
        await self._api.wait(pid, body.get("operations"))

    async def address(self, db: DatabaseRecord) -> tuple[str, int]:
        # Neon's proxy wakes a suspended endpoint on connect by itself.
        return db.upstream["host"], int(db.upstream["port"])

    def startup_params(self, db: DatabaseRecord) -> dict[str, str]:
        return {"options": f"endpoint={db.upstream['endpoint_id']}"}

    async def _endpoint_action(self, db: DatabaseRecord, action: str) -> None:
        up = db.upstream
        pid = up["project_id"]
        body = await self._api.call("POST",
                                    f"/projects/{pid}/endpoints/{up['endpoint_id']}/{action}")
        await self._api.wait(pid, body.get("operations"))

    async def start(self, db: DatabaseRecord) -> None:
        await self._endpoint_action(db, "start")

    async def stop(self, db: DatabaseRecord) -> None:
        await self._endpoint_action(db, "suspend")

    def compute_seconds(self) -> dict[tuple[str, str], float]:
        """Neon meters and bills its endpoints' compute time itself (the branch's
        ``compute_time_seconds``); the gateway adds none of its own."""
        return {}

    async def running(self, db: DatabaseRecord) -> bool | None:
        """Not asked: Neon's proxy wakes a suspended endpoint on connect by itself, and one
        API call per database at every gateway start would spend the API's rate limit."""
        return None

    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        up = db.upstream
        body = await self._api.call("GET",
                                    f"/projects/{up['project_id']}/branches/{up['branch_id']}")
        size = body.get("branch", {}).get("logical_size")
        return int(size) if size is not None else None

    async def on_tier_change(self, db: DatabaseRecord, tier: Tier) -> None:
        up = db.upstream
        pid = up["project_id"]
        body = await self._api.call(
            "PATCH", f"/projects/{pid}/endpoints/{up['endpoint_id']}",
            json={"endpoint": {"suspend_timeout_seconds": suspend_timeout(tier)}})
        await self._api.wait(pid, body.get("operations"))

    def describe(self) -> dict[str, Any]:
        return {"projects": {k or "platform": v["id"] for k, v in self._projects.items()},
                "api_retries": dict(self.api.retries) if self.api else {}}
