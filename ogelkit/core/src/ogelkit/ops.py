"""HTTP routes every gateway serves: /healthz, /readyz, /metrics and the admin API."""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ogelkit.billing import invoice, month_range
from ogelkit.control.store import AlreadyExists, NotFound, StoreError
from ogelkit.http import error_response, json_response, read_json
from ogelkit.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext

log = logging.getLogger("ogelkit.admin")

READY_TIMEOUT = 2.0


async def _probe(name: str, check, results: dict[str, Any]) -> None:
    try:
        with anyio.fail_after(READY_TIMEOUT):
            await check()
        results[name] = "ok"
    except TimeoutError:
        results[name] = "timeout"
    except Exception as exc:
        results[name] = f"error: {exc}"[:200]


async def readiness(ctx: GatewayContext) -> tuple[bool, dict[str, Any]]:
    """Control plane and every backend reachable, and not draining."""
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_probe, "control", ctx.store.ping, results)
        for name, backend in ctx.backends.items():
            tg.start_soon(_probe, f"backend:{name}", backend.check, results)
    ok = all(v == "ok" for v in results.values()) and not ctx.draining
    if ctx.draining:
        results["gateway"] = "draining"
    return ok, results


def database_json(d: Any) -> dict[str, Any]:
    """A tenant database in the admin API, with its lifecycle (state, last client, last
    cold start, a pending ``databases sleep|wake`` request)."""
    return {"name": d.name, "kind": d.kind, "backend": d.backend, "state": d.state,
            "last_active_at": d.last_active_at or None,
            "last_cold_start_at": d.last_cold_start_at,
            "last_cold_start_seconds": d.last_cold_start_seconds,
            "state_changed_at": d.state_changed_at or None,
            "requested_state": d.requested_state}


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def ops_routes(ctx: GatewayContext) -> list[BaseRoute]:
    """/healthz, /readyz, /metrics and /admin/..., as Starlette routes."""

    async def healthz(_: Request) -> Response:
        return json_response({"status": "ok", "gateway": ctx.gateway_id})

    async def readyz(_: Request) -> Response:
        ok, checks = await readiness(ctx)
        return json_response({"status": "ready" if ok else "unavailable", "checks": checks},
                             200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(ctx.metrics.render(), 200, media_type=CONTENT_TYPE_LATEST)

    admin = AdminApi(ctx)
    return [Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/{rest:path}", admin.handle, methods=_METHODS)]


class AdminApi:
    """A small JSON API for operators, behind ``[gateway] admin_token`` (Bearer)."""

    def __init__(self, ctx: GatewayContext):
        self.ctx = ctx

    def _authorized(self, request: Request) -> bool:
        token = self.ctx.config.gateway.admin_token
        if not token:
            return False
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def handle(self, request: Request) -> Response:
        if not self.ctx.config.gateway.admin_token:
            return error_response(404, "admin_disabled", "the admin API is disabled "
                                  "([gateway] admin_token is empty)")
        if not self._authorized(request):
            return error_response(401, "unauthorized", "bad or missing admin token",
                                  headers={"www-authenticate": "Bearer"})
        parts = [p for p in request.url.path.split("/") if p][1:]  # drop "admin"
        try:
            return await self._route(request, parts)
        except json.JSONDecodeError as exc:
            return error_response(400, "bad_json", f"request body is not JSON: {exc}")
        except NotFound as exc:
            return error_response(404, "not_found", str(exc))
        except AlreadyExists as exc:
            return error_response(409, "exists", str(exc))
        except (StoreError, ValueError, KeyError, TypeError) as exc:
            return error_response(400, "bad_request", str(exc))

    async def _route(self, request: Request, parts: list[str]) -> Response:
        store, m = self.ctx.store, request.method
        if parts == ["tenants"] and m == "GET":
            return json_response([attrs.asdict(t) for t in await store.list_tenants()])
        if parts == ["tenants"] and m == "POST":
            body = await read_json(request)
            tier = body.get("tier", "free")
            if tier not in self.ctx.tiers:
                raise ValueError(f'unknown tier "{tier}"')
            tenant = await store.create_tenant(body["slug"], tier)
            self.ctx.hooks.tenant_created(tenant)
            return json_response(attrs.asdict(tenant), 201)
        if len(parts) == 2 and parts[0] == "tenants":
            slug = parts[1]
            if m == "GET":
                tenant = await store.require_tenant(slug)
                dbs = await store.list_databases(slug)
                return json_response({**attrs.asdict(tenant),
                                      "sessions": self.ctx.sessions.count(slug),
                                      "databases": [database_json(d) for d in dbs]})
            if m == "PATCH":
                body = await read_json(request)
                if body.get("tier") is not None and body["tier"] not in self.ctx.tiers:
                    raise ValueError(f'unknown tier "{body["tier"]}"')
                self.ctx.directory.remember(await store.require_tenant(slug))
                tenant = await store.update_tenant(slug, tier=body.get("tier"),
                                                   status=body.get("status"))
                self.ctx.directory.apply(tenant)
                return json_response(attrs.asdict(tenant))
        if len(parts) == 3 and parts[0] == "tenants" and parts[2] == "usage" and m == "GET":
            slug = parts[1]
            tenant = await store.require_tenant(slug)
            start, end, label = month_range(request.query_params.get("month"))
            # The invoice covers every database (base price and included hours are per
            # tenant); ?database= only narrows the list.
            every = await store.usage_totals(slug, start, end)
            only = request.query_params.get("database")
            totals = [t for t in every if only is None or t.database == only]
            inv = invoice(self.ctx.directory.tier(tenant.tier), label, every)
            return json_response({"tenant": slug, "month": label,
                                  "databases": [{"database": t.database, **t.values} for t in totals],
                                  "invoice": attrs.asdict(inv)})
        if parts == ["layers"] and m == "GET":
            return json_response([{"name": layer.name, "type": layer.type_name,
                                   **layer.describe()} for layer in self.ctx.layers])
        if parts == ["reload"] and m == "POST":
            if self.ctx.reload is None:
                return error_response(501, "not_supported", "this process cannot reload")
            result = await self.ctx.reload()
            return json_response(result, 200 if result["reloaded"] else 422)
        if parts == ["audit"] and m == "GET":
            q = request.query_params
            audit = self.ctx.audit
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError("limit must be between 1 and 1000")
            before = int(q["before"]) if q.get("before") else None
            entries = audit.query(event=q.get("event"), tenant=q.get("tenant"),
                                  text=q.get("q"), before=before, limit=limit)
            page: dict[str, Any] = {"entries": entries, "kept": len(audit.entries),
                                    "suppressed_total": audit.suppressed_total}
            if len(entries) == limit:
                page["next_before"] = entries[-1]["seq"]
            return json_response(page)
        if parts == ["sessions"] and m == "GET":
            return json_response({slug: self.ctx.sessions.count(slug)
                                  for slug in self.ctx.sessions.tenants()})
        return error_response(404, "not_found", f"no admin route {m} {request.url.path}")
