"""Creating deployments through Convex's Management API (docs.convex.dev/management-api).

With ``team_id`` set, ``ogelkit databases create TENANT NAME --kind convex`` without
``--deployment-url`` creates a project ``<project_prefix>-<tenant>-<name>`` with one
deployment (``POST /teams/{team_id}/create_project``), mints a deploy key for the gateway
(``POST /deployments/{name}/create_deploy_key``) and registers both; deleting the database
deletes the project (``POST /projects/{id}/delete``). Requests carry ``Authorization: Bearer
<team access token>``, read from the environment variable ``team_token_env``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import httpx

log = logging.getLogger("ogelkit.convex")

#: Statuses worth retrying (with Retry-After on 429) for requests that changed nothing.
RETRY = frozenset({429, 502, 503, 504})


class ManagementError(Exception):
    """The Management API refused a call or could not be reached."""


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("code") or body)[:200]
    return str(body)[:200]


class ManagementApi:
    """A small client of the Management API v1."""

    def __init__(self, base_url: str, token: str, *, timeout: float, retry_budget: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                     "User-Agent": "ogelkit-convex"})
        self.retry_budget = retry_budget

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, json: Any = None) -> Any:
        """The JSON answer (or None for an empty 200). Reads are retried on 429/5xx and
        network errors within ``retry_budget``; a write that got no answer is not retried
        (it may have happened) and says so."""
        deadline = time.monotonic() + self.retry_budget
        delay = 0.2
        while True:
            try:
                resp = await self.http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if method != "GET":
                    raise ManagementError(f"{method} {path}: no answer from the Management "
                                          f"API ({exc!r}); it may have been applied") from None
                if time.monotonic() + delay > deadline:
                    raise ManagementError(f"the Management API is unreachable: {exc!r}") from None
            else:
                if resp.status_code < 300:
                    return resp.json() if resp.content else None
                if resp.status_code in (401, 403):
                    raise ManagementError(
                        f"{method} {path}: {resp.status_code} {_message(resp)} (check the team "
                        "access token and team_id)")
                if resp.status_code not in RETRY or (method != "GET" and resp.status_code != 429):
                    raise ManagementError(f"{method} {path}: {resp.status_code} {_message(resp)}")
                wait = float(resp.headers.get("retry-after", delay) or delay)
                if time.monotonic() + wait > deadline:
                    raise ManagementError(f"{method} {path}: still {resp.status_code} after "
                                          f"{self.retry_budget:g}s: {_message(resp)}")
                delay = wait
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 1.6)


class DeploymentFactory:
    """Creates and deletes one project (with its deployment) per tenant database."""

    def __init__(self, *, url: str, team_id: str, token_env: str, deployment_type: str,
                 prefix: str, timeout: float,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = url
        self.team_id = team_id
        self.token_env = token_env
        self.deployment_type = deployment_type
        self.prefix = prefix
        self.timeout = timeout
        self.transport = transport

    def _api(self) -> ManagementApi:
        token = os.environ.get(self.token_env, "")
        if not token:
            raise ManagementError(f"the environment variable {self.token_env} (team_token_env) "
                                  "holding the Convex team access token is not set")
        return ManagementApi(self.url, token, timeout=self.timeout, transport=self.transport)

    def project_name(self, tenant: str, name: str) -> str:
        return f"{self.prefix}-{tenant}-{name}"

    async def create(self, tenant: str, name: str) -> dict[str, Any]:
        """``{deployment_url, admin_key, managed: {project_id, deployment_name}}``. A
        project of that name already there (a run that stopped before recording it) is an
        error naming it, not a second project; a failure after creating the project
        deletes it again."""
        project = self.project_name(tenant, name)
        api = self._api()
        try:
            projects = await api.call("GET", f"/teams/{self.team_id}/list_projects")
            if any(isinstance(p, dict) and p.get("name") == project for p in projects or []):
                raise ManagementError(
                    f'a Convex project named "{project}" already exists in team {self.team_id} '
                    "(left by an interrupted create?): delete it in the dashboard, or register "
                    "its deployment with --deployment-url and --admin-key")
            made = await api.call("POST", f"/teams/{self.team_id}/create_project",
                                  {"projectName": project,
                                   "deploymentType": self.deployment_type})
            try:
                pid, dep, url = made["projectId"], made["deploymentName"], made["deploymentUrl"]
                key = (await api.call("POST", f"/deployments/{dep}/create_deploy_key",
                                      {"name": f"ogelkit gateway ({tenant}/{name})"}))["deployKey"]
            except Exception:
                if isinstance(made, dict) and "projectId" in made:
                    await self._delete_quietly(api, made["projectId"])
                raise
        except (KeyError, TypeError) as exc:
            raise ManagementError(f"unexpected answer from the Management API: {exc!r}") from None
        finally:
            await api.close()
        log.info("created Convex deployment", extra={"tenant": tenant, "database": name,
                                                     "deployment": dep, "project_id": pid})
        return {"deployment_url": str(url).rstrip("/"), "admin_key": str(key),
                "managed": {"project_id": pid, "deployment_name": dep}}

    async def delete(self, managed: dict[str, Any]) -> None:
        """Delete the project (and so its deployment); gone already is fine."""
        api = self._api()
        try:
            await api.call("POST", f"/projects/{managed['project_id']}/delete")
        except ManagementError as exc:
            if " 404 " not in str(exc):
                raise
        finally:
            await api.close()

    @staticmethod
    async def _delete_quietly(api: ManagementApi, project_id: Any) -> None:
        try:
            await api.call("POST", f"/projects/{project_id}/delete")
        except ManagementError as exc:
            log.warning("could not delete the half-made Convex project %s: %s", project_id, exc)
