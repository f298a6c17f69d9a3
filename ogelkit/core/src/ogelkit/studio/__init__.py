"""Studio: the gateway's web page for operators and tenants (``/studio/``).

A static single page (``static/``: HTML, one script, one stylesheet, no third-party code
and no CDN) that talks to the admin API with a bearer token: the operator's admin token, or
a tenant's token from ``POST /admin/login``. Everything it shows, a script could get from
the API too.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
#: The page may load only its own files and talk only to this gateway.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _headers() -> dict[str, str]:
    return {"content-security-policy": CSP, "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer", "cache-control": "no-cache"}


async def _index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type=_TYPES[".html"], headers=_headers())


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    path = (STATIC / name).resolve()
    if path.parent != STATIC.resolve() or not path.is_file() or path.suffix not in _TYPES:
        return Response("not found\n", 404, media_type="text/plain")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_headers())


async def _root(_: Request) -> Response:
    return RedirectResponse("/studio/", 307)


def studio_routes() -> list[BaseRoute]:
    return [Route("/", _root, methods=["GET"]),
            Route("/studio", _root, methods=["GET"]),
            Route("/studio/", _index, methods=["GET"]),
            Route("/studio/static/{name}", _asset, methods=["GET"])]
