"""HTTP routes every gateway serves: /healthz, /readyz, /metrics, the admin API, Studio."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ogelkit.http import json_response
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


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def ops_routes(ctx: GatewayContext, extra_endpoints: Sequence[Any] = ()) -> list[BaseRoute]:
    """/healthz, /readyz, /metrics, /admin/... (the core's endpoints and the plugins'
    ``extra_endpoints``) and Studio, as Starlette routes."""
    from ogelkit.admin.api import AdminApi
    from ogelkit.admin.endpoints import CORE_ENDPOINTS
    from ogelkit.studio import studio_routes

    async def healthz(_: Request) -> Response:
        return json_response({"status": "ok", "gateway": ctx.gateway_id})

    async def readyz(_: Request) -> Response:
        ok, checks = await readiness(ctx)
        return json_response({"status": "ready" if ok else "unavailable", "checks": checks},
                             200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(ctx.metrics.render(), 200, media_type=CONTENT_TYPE_LATEST)

    ctx.admin_endpoints = [*CORE_ENDPOINTS, *extra_endpoints]
    admin = AdminApi(ctx, ctx.admin_endpoints)
    return [Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin.routes(), *studio_routes()]
