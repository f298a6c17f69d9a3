"""The OpenAPI 3.1 document of the admin API, built from the endpoint table (the core's and
the plugins'), so it cannot drift from what is served."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ogelkit.admin.api import Endpoint
from ogelkit.admin.problems import MEDIA_TYPE, PROBLEM_SCHEMA

_PATH_PARAM = re.compile(r"{(\w+)}")
#: Path parameters' schemas (slugs and database names have the control plane's rules).
PATH_PARAMS = {
    "slug": {"type": "string", "pattern": r"^[a-z][a-z0-9-]{0,62}$"},
    "db": {"type": "string", "pattern": r"^[a-z][a-z0-9_-]{0,39}$"},
}


ERRORS = {
    401: "Bad credentials.", 422: "The new config has problems; the old one stays.",
    429: "Refused by a layer (rate, connections, ban); see Retry-After.",
    403: "Refused by a layer (cost ceiling, suspension).", 501: "Not supported here.",
    503: "The upstream database or deployment is unavailable.",
    504: "Stopped by the timeout layer.", 507: "Over the tier's quota.",
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _operation(ep: Endpoint) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": PATH_PARAMS.get(name, {"type": "string"})}
              for name in _PATH_PARAM.findall(ep.path)]
    params += [{"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
                **({"description": p.description} if p.description else {})}
               for p in ep.params]
    responses: dict[str, Any] = {}
    if ep.status == 204:
        responses["204"] = {"description": "Done."}
    else:
        responses[str(ep.status)] = {"description": "Success.", "content": {
            "application/json": {"schema": ep.response}}}
    responses["400"] = _problem("The request does not match this operation's schema.")
    if ep.access != "public":
        responses["401"] = _problem("No, a bad, an expired or a revoked bearer token.")
        responses["403"] = _problem("A tenant token on an operator's endpoint.")
    if "{" in ep.path or ep.access != "public":
        responses["404"] = _problem("No such tenant or database (or the admin API is off).")
    if ep.method in ("POST", "PATCH", "DELETE"):
        responses["409"] = _problem("It exists already, or cannot be done now.")
    if ep.request is not None:
        responses["413"] = _problem("The request body is too large.")
    for status in ep.errors:
        responses[str(status)] = _problem(ERRORS.get(status, "Refused."))
    op: dict[str, Any] = {"operationId": f"{ep.method.lower()}{_op_name(ep.path)}",
                          "summary": ep.summary, "tags": [ep.tag], "parameters": params,
                          "responses": responses}
    if ep.description:
        op["description"] = ep.description
    if ep.access == "public":
        op["security"] = []
    if ep.request is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ep.request}}}
    return op


def _op_name(path: str) -> str:
    words = re.split(r"[/_{}.-]+", path.removeprefix("/admin"))
    return "".join(w[:1].upper() + w[1:] for w in words if w)


#: Marks of schemas whose values are this gateway's own names, filled in per document as
#: an enum: tier names, backend kinds, backend names.
TIER_MARK = "x-ogelkit-tier"
KIND_MARK = "x-ogelkit-kind"
BACKEND_MARK = "x-ogelkit-backend"


def _fill(value: Any, names: dict[str, list[str]]) -> Any:
    if isinstance(value, dict):
        for mark, enum in names.items():
            if value.get(mark) and enum:  # no names configured: the plain schema stays
                return {"type": "string", "enum": enum}
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def document(endpoints: Sequence[Endpoint], tiers: Sequence[str] = (),
             kinds: Sequence[str] = (), backends: Sequence[str] = ()) -> dict[str, Any]:
    names = {TIER_MARK: list(tiers), KIND_MARK: sorted(set(kinds)),
             BACKEND_MARK: list(backends)}
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _fill(_operation(ep), names)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ogelkit admin API", "version": "1",
                 "description": "Operate an ogelkit gateway: tenants, databases, "
                                "credentials, usage, layer decisions, the audit log. Bearer "
                                "tokens: the operator's `[gateway] admin_token`, or a "
                                "tenant's token from `POST /admin/login` (its own data "
                                "only). Errors are RFC 9457 problem details."},
        "paths": paths,
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
