"""Errors of the admin API as RFC 9457 problem details (``application/problem+json``).

Every refusal carries ``type`` (a stable URI per kind of problem), ``title`` (its short
name), ``status``, ``detail`` (this occurrence, for humans) and ``code`` (the same kind,
for programs), plus ``instance`` (the request path) and any extension members.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://ogelkit.dev/problems/"

#: code -> title
TITLES = {
    "bad_request": "Bad request",
    "bad_json": "Request body is not JSON",
    "unauthorized": "Authentication required",
    "forbidden": "Not allowed for this principal",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "exists": "Already exists",
    "conflict": "Conflict",
    "unsupported": "Not supported by this backend",
    "admin_disabled": "The admin API is disabled",
    "refused": "Refused by a layer",
    "unavailable": "Service unavailable",
    "not_supported": "Not supported by this process",
    "reload_failed": "Reload failed",
    "internal": "Internal error",
}


class Problem(Exception):
    """Raise from an endpoint to answer with problem details."""

    def __init__(self, status: int, code: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(status: int, code: str, detail: str, *, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": TYPE_BASE + code, "title": TITLES.get(code, code),
                            "status": status, "detail": detail, "code": code}
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return Response(json.dumps(body, default=str).encode() + b"\n", status, headers=headers,
                    media_type=MEDIA_TYPE)


#: The schema of a problem document, for the OpenAPI description.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(TITLES)},
        "instance": {"type": "string"},
    },
}
