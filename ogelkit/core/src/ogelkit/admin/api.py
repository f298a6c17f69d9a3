"""The admin API's machinery: endpoints described once (method, path, access, schemas), and
from that description the Starlette routes, the bearer-token check, request validation,
problem-details errors and the OpenAPI document.

Plugins add endpoints of their own through the ``ogelkit_admin_endpoints`` hook; they get
the same authentication, errors and place in the OpenAPI document.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ogelkit.admin.problems import Problem, problem_response
from ogelkit.admin.tokens import ANONYMOUS, OPERATOR, Principal, parse, valid
from ogelkit.http import MAX_BODY, json_response

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext

log = logging.getLogger("ogelkit.admin")

#: Who may call an endpoint: anyone; any signed-in principal (the handler narrows what a
#: tenant sees); the operator only; or the operator and the tenant named by ``{slug}``.
ACCESS = ("public", "any", "operator", "tenant")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@attrs.frozen
class Param:
    """A query parameter: ``schema`` is its JSON schema (``{"type": "integer", ...}``)."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@attrs.frozen
class Endpoint:
    """One admin API operation. ``handler(call)`` returns the success body (answered with
    ``status``), or a ``Response``; it raises ``Problem`` for errors."""

    method: str
    path: str
    handler: Callable[[Call], Awaitable[Any]]
    summary: str
    access: str = "operator"
    request: dict[str, Any] | None = None
    response: dict[str, Any] = attrs.field(factory=lambda: {"type": "object"})
    status: int = 200
    params: Sequence[Param] = ()
    tag: str = "admin"
    description: str = ""
    #: Problem statuses this endpoint answers besides the common ones (documented).
    errors: Sequence[int] = ()

    def __attrs_post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"access must be one of {ACCESS}")
        if self.access == "tenant" and "{slug}" not in self.path:
            raise ValueError("a tenant endpoint's path names the tenant as {slug}")


@attrs.define
class Call:
    """One request to an endpoint: the context, who calls, path parameters, the validated
    body and query."""

    request: Request
    ctx: GatewayContext
    principal: Principal
    path: dict[str, str]
    body: Any
    query: dict[str, Any]

    @property
    def slug(self) -> str:
        return self.path["slug"]


# -- validation ------------------------------------------------------------------------------
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}


def validate(value: Any, schema: dict[str, Any], where: str = "body") -> list[str]:
    """The problems of ``value`` against the subset of JSON Schema the API uses (type,
    required, properties, additionalProperties, enum, pattern, minLength, maxLength,
    minimum, maximum, items)."""
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        ok = any((value is None if k == "null" else isinstance(value, _TYPES[k]) and not (
            k in ("integer", "number") and isinstance(value, bool))) for k in names)
        if not ok:
            return [f"{where}: expected {' or '.join(names)}, found {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: expected one of {schema['enum']}, found {value!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: above {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}.{key}: required")
        for key, item in value.items():
            if key in props:
                problems += validate(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}.{key}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


def _query_value(raw: str, schema: dict[str, Any], name: str) -> Any:
    if schema.get("type") == "integer":
        if not re.fullmatch(r"-?\d{1,18}", raw):
            raise Problem(400, "bad_request", f"query parameter {name}: expected an integer")
        value: Any = int(raw)
    else:
        value = raw
    problems = validate(value, schema, f"query parameter {name}")
    if problems:
        raise Problem(400, "bad_request", "; ".join(problems))
    return value


# -- the API ---------------------------------------------------------------------------------
class AdminApi:
    """The endpoints of the core and of plugins, mounted under ``/admin``."""

    def __init__(self, ctx: GatewayContext, endpoints: Sequence[Endpoint]):
        self.ctx = ctx
        self.endpoints = list(endpoints)

    # -- who calls ---------------------------------------------------------------------------
    async def principal(self, request: Request) -> Principal:
        gw = self.ctx.config.gateway
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Problem(401, "unauthorized", "a bearer token is required (the admin token, "
                          "or a tenant token from POST /admin/login)",
                          headers={"www-authenticate": 'Bearer realm="ogelkit"'})
        if gw.admin_token and hmac.compare_digest(given.encode(), gw.admin_token.encode()):
            return OPERATOR
        parsed = parse(given)
        if parsed is not None:
            verifier = await self.ctx.store.get_verifier(parsed[0])
            if valid(self.ctx.config.control.secret_key, given, verifier):
                return Principal(parsed[0])
        raise Problem(401, "unauthorized", "bad, expired or revoked token",
                      headers={"www-authenticate": 'Bearer realm="ogelkit", '
                                                   'error="invalid_token"'})

    # -- routes ------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        by_path: dict[str, dict[str, Endpoint]] = {}
        for ep in self.endpoints:
            by_path.setdefault(ep.path, {})[ep.method] = ep
        # Every method reaches the dispatcher, which answers 405 itself (a route limited to
        # its methods would let the catch-all below answer 404 instead).
        routes: list[BaseRoute] = [Route(path, self._dispatcher(methods), methods=ALL_METHODS)
                                   for path, methods in by_path.items()]
        # Anything else under /admin is a problem too, not the app's generic 404.
        routes.append(Route("/admin/{rest:path}", self._unknown, methods=ALL_METHODS))
        return routes

    async def _unknown(self, request: Request) -> Response:
        return problem_response(404, "not_found", f"no admin route {request.method} "
                                f"{request.url.path}", instance=request.url.path)

    def _dispatcher(self, methods: dict[str, Endpoint]
                    ) -> Callable[[Request], Awaitable[Response]]:
        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            ep = methods.get(method)
            if ep is None:
                return problem_response(405, "method_not_allowed",
                                        f"{request.method} not allowed here",
                                        instance=request.url.path,
                                        headers={"allow": ", ".join(sorted(methods))})
            try:
                return await self._serve(ep, request)
            except Problem as p:
                return problem_response(p.status, p.code, p.detail, instance=request.url.path,
                                        headers=p.headers, **p.extra)
        return dispatch

    async def _serve(self, ep: Endpoint, request: Request) -> Response:
        if ep.access == "public":
            principal = ANONYMOUS
        else:
            if not self.ctx.config.gateway.admin_token and ep.access == "operator":
                raise Problem(404, "admin_disabled", "the admin API is disabled ([gateway] "
                              "admin_token is empty)")
            principal = await self.principal(request)
        path = dict(request.path_params)
        if ep.access != "public":
            if ep.access == "operator" and not principal.operator:
                raise Problem(403, "forbidden", "this needs the operator's admin token")
            if ep.access == "tenant" and not principal.may_see(path.get("slug", "")):
                # The same answer as for a tenant that does not exist: no probing.
                raise Problem(404, "not_found", f'no tenant "{path.get("slug")}"')
        known = {p.name for p in ep.params}
        unknown = sorted(set(request.query_params) - known)
        if unknown:  # a typo (?tennant=) must not silently widen what is returned
            raise Problem(400, "bad_request", f"unknown query parameter(s) {unknown}; this "
                          f"endpoint takes {sorted(known) or 'none'}")
        query = {}
        for param in ep.params:
            raw = request.query_params.get(param.name)
            if raw is None:
                if param.required:
                    raise Problem(400, "bad_request", f"query parameter {param.name} is "
                                  "required")
                continue
            query[param.name] = _query_value(raw, param.schema, param.name)
        body = None
        if ep.request is not None:
            raw_body = await request.body()
            if len(raw_body) > MAX_BODY:
                raise Problem(413, "bad_request", "request body too large")
            try:
                body = json.loads(raw_body or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise Problem(400, "bad_json", f"request body is not JSON: {exc}") from None
            problems = validate(body, ep.request)
            if problems:
                raise Problem(400, "bad_request", "; ".join(problems), errors=problems)
        call = Call(request, self.ctx, principal, path, body, query)
        result = await ep.handler(call)
        if isinstance(result, Response):
            return result
        if ep.status == 204:
            return Response(status_code=204)
        return json_response(result, ep.status)


# -- pagination ------------------------------------------------------------------------------
LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
              "Items per page (default 100).")
CURSOR = Param("cursor", {"type": "string", "maxLength": 200},
               "The next_cursor of the previous page.")


def page_schema(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": item},
                           "next_cursor": {"type": ["string", "null"]}}}


def paginate(items: Sequence[Any], key: Callable[[Any], str], call: Call) -> dict[str, Any]:
    """Items sorted by ``key``; a page of ``limit`` after ``cursor`` (the last key of the
    previous page), and the cursor of the next page (None on the last)."""
    limit = call.query.get("limit", 100)
    cursor = call.query.get("cursor")
    ordered = sorted(items, key=key)
    if cursor is not None:
        ordered = [i for i in ordered if key(i) > cursor]
    page = ordered[:limit]
    more = len(ordered) > limit
    return {"items": page, "next_cursor": key(page[-1]) if more and page else None}
