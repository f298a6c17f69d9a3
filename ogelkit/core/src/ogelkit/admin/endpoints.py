"""The core's admin endpoints: everything the CLI does, as JSON.

Tenants, tiers, suspension, credentials (the one-time password is in the response),
databases (create, delete, branch, sleep, wake, a console through the layers), usage with
the invoice preview, recent layer decisions, sessions, live statistics, the audit log,
layers, reload, and sign-in for tenants.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from ogelkit import provisioning
from ogelkit.admin.api import CURSOR, LIMIT, Call, Endpoint, Param, page_schema, paginate
from ogelkit.admin.problems import Problem
from ogelkit.admin.tokens import issue
from ogelkit.backend import Capability
from ogelkit.billing import invoice, month_range
from ogelkit.control.records import DatabaseRecord, TenantRecord
from ogelkit.control.store import AlreadyExists, NotFound
from ogelkit.scram import parse_verifier

# -- schemas -----------------------------------------------------------------------------------
SLUG_SCHEMA = {"type": "string", "pattern": provisioning.SLUG.pattern, "maxLength": 63}
NAME_SCHEMA = {"type": "string", "pattern": provisioning.DATABASE_NAME.pattern,
               "maxLength": 40}
NUM = {"type": "number"}
TENANT_PROPERTIES: dict[str, Any] = {
    "slug": {"type": "string"}, "tier": {"type": "string"},
    "status": {"type": "string", "enum": ["active", "suspended"]},
    "created_at": NUM, "updated_at": NUM}
TENANT = {"type": "object", "required": ["slug", "tier", "status"],
          "properties": TENANT_PROPERTIES}
DATABASE = {"type": "object", "required": ["tenant", "name", "kind", "backend", "state"],
            "properties": {
                "tenant": {"type": "string"}, "name": {"type": "string"},
                "kind": {"type": "string"}, "backend": {"type": "string"},
                "state": {"type": "string"}, "created_at": NUM,
                "last_active_at": {"type": ["number", "null"]},
                "last_cold_start_at": {"type": ["number", "null"]},
                "last_cold_start_seconds": {"type": ["number", "null"]},
                "state_changed_at": {"type": ["number", "null"]},
                "requested_state": {"type": ["string", "null"]},
                "connection_string": {"type": "string"},
                "storage_bytes": {"type": ["number", "null"]},
                "capabilities": {"type": "array", "items": {"type": "string"}}}}
CREATED_DATABASE = {"type": "object", "required": ["database", "connection_string", "password"],
                    "properties": {"database": DATABASE, "connection_string": {"type": "string"},
                                   "password": {"type": ["string", "null"]}}}
PASSWORD = {"type": "object", "required": ["tenant", "password"],
            "properties": {"tenant": {"type": "string"}, "password": {"type": "string"}}}
OBJECT = {"type": "object"}
MONTH = Param("month", {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"},
              "YYYY-MM (default: this month).")


database_json = provisioning.database_json


def tenant_json(t: TenantRecord) -> dict[str, Any]:
    return attrs.asdict(t)


def _tier_json(ctx: Any, name: str) -> dict[str, Any]:
    tier = ctx.directory.tier(name)
    out = {k: v for k, v in attrs.asdict(tier).items() if k != "price"}
    out["price"] = attrs.asdict(tier.price)
    return out


async def _tenant(call: Call) -> TenantRecord:
    try:
        return await call.ctx.store.require_tenant(call.slug)
    except NotFound:
        raise Problem(404, "not_found", f'no tenant "{call.slug}"') from None


async def _database(call: Call) -> tuple[TenantRecord, DatabaseRecord]:
    tenant = await _tenant(call)
    db = await call.ctx.store.get_database(call.slug, call.path["db"])
    if db is None:
        raise Problem(404, "not_found", f'tenant "{call.slug}" has no database '
                      f'"{call.path["db"]}"')
    return tenant, db


def _backend_of(call: Call, db: DatabaseRecord) -> Any:
    backend = call.ctx.backends.get(db.backend)
    if backend is None:
        raise Problem(409, "conflict", f"database {db.name} lives on backend {db.backend}, "
                      "which this gateway does not run")
    return backend


def _check_tier(call: Call, tier: str | None) -> None:
    if tier is not None and tier not in call.ctx.tiers:
        raise Problem(400, "bad_request", f'unknown tier "{tier}" (tiers: '
                      f'{", ".join(call.ctx.tiers)})')


# -- tenants -----------------------------------------------------------------------------------
async def list_tenants(call: Call) -> Any:
    tenants = await call.ctx.store.list_tenants()
    if not call.principal.operator:
        tenants = [t for t in tenants if t.slug == call.principal.tenant]
    page = paginate(tenants, lambda t: t.slug, call)
    page["items"] = [tenant_json(t) for t in page["items"]]
    return page


async def create_tenant(call: Call) -> Any:
    tier = call.body.get("tier", "free")
    _check_tier(call, tier)
    try:
        tenant, password = await provisioning.create_tenant(call.ctx.store, call.body["slug"],
                                                            tier)
    except AlreadyExists as exc:
        raise Problem(409, "exists", str(exc)) from None
    call.ctx.hooks.tenant_created(tenant)
    return {**tenant_json(tenant), "password": password}


async def show_tenant(call: Call) -> Any:
    tenant = await _tenant(call)
    ctx = call.ctx
    dbs = await ctx.store.list_databases(call.slug)
    return {**tenant_json(tenant), "sessions": ctx.sessions.count(call.slug),
            "limits": _tier_json(ctx, tenant.tier),
            "databases": [database_json(d) for d in dbs]}


async def update_tenant(call: Call) -> Any:
    body = call.body
    _check_tier(call, body.get("tier"))
    ctx = call.ctx
    ctx.directory.remember(await _tenant(call))
    tenant = await ctx.store.update_tenant(call.slug, tier=body.get("tier"),
                                           status=body.get("status"))
    ctx.directory.apply(tenant)
    return tenant_json(tenant)


async def delete_tenant(call: Call) -> Any:
    tenant = await _tenant(call)
    try:
        await provisioning.delete_tenant(call.ctx, tenant)
    except LookupError as exc:
        raise Problem(409, "conflict", str(exc)) from None
    call.ctx.directory.invalidate(call.slug)
    return None


async def rotate_credentials(call: Call) -> Any:
    await _tenant(call)
    password = await provisioning.rotate_password(call.ctx.store, call.slug)
    call.ctx.directory.invalidate(call.slug)
    call.ctx.audit.record("credentials_rotated", tenant=call.slug,
                          by="operator" if call.principal.operator else "tenant")
    return {"tenant": call.slug, "password": password}


# -- databases ---------------------------------------------------------------------------------
async def list_databases(call: Call) -> Any:
    await _tenant(call)
    dbs = await call.ctx.store.list_databases(call.slug)
    page = paginate(dbs, lambda d: d.name, call)
    page["items"] = [database_json(d) for d in page["items"]]
    return page


def _pick_backend(call: Call, kind: str, backend_id: str | None) -> Any:
    backends = call.ctx.backends
    if backend_id is not None:
        backend = backends.get(backend_id)
        # A well-formed request naming a backend this gateway does not have: the resource
        # it refers to is not found (404); two that could serve it: a conflict (409).
        if backend is None or backend.kind != kind:
            raise Problem(404, "not_found", f'no {kind} backend "{backend_id}" (backends: '
                          f'{", ".join(backends) or "none"})')
        return backend
    matches = [b for b in backends.values() if b.kind == kind]
    if not matches:
        kinds = sorted({b.kind for b in backends.values()})
        raise Problem(404, "not_found", f'no backend of kind "{kind}" (kinds: '
                      f'{", ".join(kinds) or "none"})')
    if len(matches) > 1:
        raise Problem(409, "ambiguous", f"several {kind} backends "
                      f"({', '.join(b.name for b in matches)}): name one as backend")
    return matches[0]


async def create_database(call: Call) -> Any:
    tenant = await _tenant(call)
    body = call.body
    backend = _pick_backend(call, body["kind"], body.get("backend"))
    name = body["name"]
    if await call.ctx.store.get_database(call.slug, name) is not None:
        raise Problem(409, "exists", f'tenant "{call.slug}" already has a database "{name}"')
    extra = dict(body.get("options") or {})
    try:
        db, password, dsn = await provisioning.create_database(call.ctx, tenant, name, backend,
                                                               **extra)
    except TypeError:
        if not extra:
            raise
        raise Problem(400, "bad_request", f"backend kind {backend.kind} takes no options "
                      f"{sorted(extra)}") from None
    except ValueError as exc:
        raise Problem(400, "bad_request", str(exc)) from None
    call.ctx.hooks.database_created(tenant, db)
    call.ctx.directory.invalidate(call.slug)
    return {"database": database_json(db), "connection_string": dsn, "password": password}


async def show_database(call: Call) -> Any:
    tenant, db = await _database(call)
    out = database_json(db)
    backend = call.ctx.backends.get(db.backend)
    if backend is not None:
        out["connection_string"] = backend.connection_string(
            tenant, db, None, call.ctx.config.gateway.public_host,
            provisioning.backend_port(call.ctx, backend))
        out["capabilities"] = sorted(str(c) for c in backend.capabilities)
        try:
            out["storage_bytes"] = await backend.storage_bytes(db)
        except Exception:
            out["storage_bytes"] = None
    return out


async def delete_database(call: Call) -> Any:
    tenant, db = await _database(call)
    try:
        await provisioning.delete_database(call.ctx, tenant, db)
    except LookupError as exc:
        raise Problem(409, "conflict", str(exc)) from None
    call.ctx.directory.invalidate(call.slug)
    return None


async def branch_database(call: Call) -> Any:
    tenant, parent = await _database(call)
    backend = _backend_of(call, parent)
    if Capability.BRANCH not in backend.capabilities:
        raise Problem(400, "unsupported", f"{backend.kind} databases cannot be branched")
    name = call.body["name"]
    store = call.ctx.store
    if await store.get_database(call.slug, name) is not None:
        raise Problem(409, "exists", f'tenant "{call.slug}" already has a database "{name}"')
    upstream = await backend.branch(tenant, parent, name, call.ctx.directory.tier(tenant.tier))
    db = await store.put_database(DatabaseRecord(call.slug, name, backend.kind, backend.name,
                                                 upstream))
    call.ctx.hooks.database_created(tenant, db)
    call.ctx.directory.invalidate(call.slug)
    return {"database": database_json(db), "connection_string": backend.connection_string(
        tenant, db, None, call.ctx.config.gateway.public_host,
        provisioning.backend_port(call.ctx, backend)), "password": None}


def _lifecycle(action: str) -> Any:
    want = "asleep" if action == "sleep" else "active"
    capability = Capability.SLEEP if action == "sleep" else Capability.WAKE

    async def handler(call: Call) -> Any:
        _tenant_record, db = await _database(call)
        backend = _backend_of(call, db)
        if capability not in backend.capabilities:
            raise Problem(400, "unsupported", f"{backend.kind} databases cannot {action} "
                          "(they are always ready)")
        # The lifecycle scheduler (on whichever gateway leads it) applies the request.
        await call.ctx.store.request_database_state(call.slug, db.name, want)
        return {"tenant": call.slug, "database": db.name, "state": db.state,
                "requested_state": want}
    return handler


async def console(call: Call) -> Any:
    from ogelkit.admin.console import run_console
    tenant, db = await _database(call)
    backend = _backend_of(call, db)
    return await run_console(call.ctx, tenant, db, backend, call.body)


# -- usage, decisions, sessions, statistics ---------------------------------------------------
async def usage(call: Call) -> Any:
    tenant = await _tenant(call)
    ctx = call.ctx
    try:
        start, end, label = month_range(call.query.get("month"))
    except ValueError as exc:
        raise Problem(400, "bad_request", str(exc)) from None
    # The invoice covers every database (base price and included hours are per tenant);
    # ?database= only narrows the list.
    every = await ctx.store.usage_totals(call.slug, start, end)
    only = call.query.get("database")
    totals = [t for t in every if only is None or t.database == only]
    inv = invoice(ctx.directory.tier(tenant.tier), label, every)
    return {"tenant": call.slug, "month": label,
            "databases": [{"database": t.database, **t.values} for t in totals],
            "invoice": attrs.asdict(inv)}


def _sessions_of(ctx: Any, slug: str) -> list[dict[str, Any]]:
    now = time.monotonic()
    return [{"protocol": s.protocol, "database": s.database, "client": s.client_addr,
             "tier": s.tier.name if s.tier is not None else None,
             "seconds": round(now - s.opened_at, 3)}
            for s in ctx.sessions.of(slug)]


async def tenant_sessions(call: Call) -> Any:
    await _tenant(call)
    sessions = _sessions_of(call.ctx, call.slug)
    return {"tenant": call.slug, "count": len(sessions), "sessions": sessions}


async def all_sessions(call: Call) -> Any:
    return {slug: call.ctx.sessions.count(slug) for slug in call.ctx.sessions.tenants()}


async def decisions(call: Call) -> Any:
    """Layer decision counters (this process) and the most recent refusals."""
    ctx = call.ctx
    tenant = call.query.get("tenant")
    if not call.principal.operator:
        tenant = call.principal.tenant
    layer = call.query.get("layer")
    counters = [{"layer": lbl[0], "decision": lbl[1], "reason": lbl[2], "tier": lbl[3],
                 "count": value}
                for lbl, value in ctx.metrics.decision_counts()
                if layer is None or lbl[0] == layer]
    limit = call.query.get("limit", 100)
    recent = [e for e in ctx.audit.query(event="operation_refused", tenant=tenant,
                                         limit=1000)
              if layer is None or e.get("layer") == layer][:limit]
    return {"counters": counters if call.principal.operator else [], "recent": recent}


async def stats(call: Call) -> Any:
    """What Studio's live view plots: per tenant operations, errors and refusals by layer
    and reason since start, and this process's sessions. Rates are differences between
    two polls (the page computes them)."""
    ctx = call.ctx
    slug = call.query.get("tenant")
    if not call.principal.operator:
        slug = call.principal.tenant
    return {"time": time.time(), **ctx.live.snapshot(slug),
            "sessions": ctx.sessions.count(slug) if slug else ctx.sessions.count()}


# -- audit, layers, reload, identity ------------------------------------------------------------
async def audit(call: Call) -> Any:
    q = call.query
    tenant = q.get("tenant") if call.principal.operator else call.principal.tenant
    log = call.ctx.audit
    limit = q.get("limit", 100)
    cursor = q.get("cursor")
    before = int(cursor) if cursor and cursor.isdigit() else None
    entries = log.query(event=q.get("event"), tenant=tenant, text=q.get("q"), before=before,
                        limit=limit)
    return {"items": entries,
            "next_cursor": str(entries[-1]["seq"]) if len(entries) == limit else None,
            "kept": len(log.entries), "suppressed_total": log.suppressed_total}


async def backends(call: Call) -> Any:
    return [{"name": b.name, "kind": b.kind, "protocol": b.protocol,
             "capabilities": sorted(str(c) for c in b.capabilities)}
            for b in call.ctx.backends.values()]


async def layers(call: Call) -> Any:
    return [{"name": layer.name, "type": layer.type_name, **layer.describe()}
            for layer in call.ctx.layers]


async def reload(call: Call) -> Any:
    from ogelkit.http import json_response
    if call.ctx.reload is None:
        raise Problem(501, "not_supported", "this process cannot reload")
    result = await call.ctx.reload()
    return json_response(result, 200 if result["reloaded"] else 422)


async def login(call: Call) -> Any:
    """A tenant signs in with its own credentials and gets a token for its own data."""
    ctx = call.ctx
    slug, password = call.body["tenant"], call.body["password"]
    verifier_text = await ctx.store.get_verifier(slug) if provisioning.SLUG.match(slug) \
        else None
    directory = ctx.directory
    verifier = parse_verifier(verifier_text) if verifier_text is not None else \
        directory.verifier_for(slug, None)
    # The same key derivation for an unknown tenant: the answer's timing tells nothing.
    ok = await directory.check_password_against(verifier, password)
    if not ok or verifier_text is None:
        ctx.audit.record("login_failed", protocol="admin", client=_client(call), user=slug,
                         tenant=slug if verifier_text is not None else None,
                         reason="auth", text="Studio/admin API sign-in")
        raise Problem(401, "unauthorized", "unknown tenant or wrong password")
    token, expires = issue(ctx.config.control.secret_key, slug, verifier_text)
    return {"token": token, "tenant": slug, "expires_at": expires}


def _client(call: Call) -> str:
    c = call.request.client
    return f"{c.host}:{c.port}" if c else "unknown"


async def whoami(call: Call) -> Any:
    p = call.principal
    return {"role": "operator" if p.operator else "tenant", "tenant": p.tenant}


async def openapi(call: Call) -> Any:
    from ogelkit.admin.openapi import document
    backends = call.ctx.backends
    return document(call.ctx.admin_endpoints, list(call.ctx.tiers),
                    [b.kind for b in backends.values()], list(backends))


# -- the table ---------------------------------------------------------------------------------
T = "/admin/tenants/{slug}"
D = T + "/databases/{db}"
#: A tier name: the OpenAPI document lists this gateway's tiers (the handler checks them).
TIER_NAMES = {"type": "string", "minLength": 1, "maxLength": 64, "x-ogelkit-tier": True}
#: A backend kind / backend name: listed the same way (the handler checks the pair).
KIND_NAMES = {"type": "string", "maxLength": 64, "x-ogelkit-kind": True}
BACKEND_NAMES = {"type": "string", "maxLength": 64, "x-ogelkit-backend": True}
CORE_ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/admin/openapi.json", openapi, "This OpenAPI document", access="public",
             tag="meta"),
    Endpoint("POST", "/admin/login", login, "Sign in as a tenant: a bearer token for its own "
             "data (12 h; rotating the password revokes it)", access="public", tag="meta",
             errors=(401,),
             request={"type": "object", "required": ["tenant", "password"],
                      "additionalProperties": False,
                      "properties": {"tenant": {"type": "string", "maxLength": 200},
                                     "password": {"type": "string", "maxLength": 1024}}},
             response={"type": "object", "required": ["token", "tenant", "expires_at"],
                       "properties": {"token": {"type": "string"},
                                      "tenant": {"type": "string"},
                                      "expires_at": {"type": "integer"}}}),
    Endpoint("GET", "/admin/whoami", whoami, "Who the token belongs to", access="any",
             tag="meta", response={"type": "object", "required": ["role", "tenant"],
                                   "properties": {"role": {"enum": ["operator", "tenant"]},
                                                  "tenant": {"type": ["string", "null"]}}}),
    Endpoint("GET", "/admin/tenants", list_tenants, "List tenants (a tenant sees itself)",
             access="any", params=(LIMIT, CURSOR), response=page_schema(TENANT), tag="tenants"),
    Endpoint("POST", "/admin/tenants", create_tenant, "Create a tenant; the response holds "
             "its generated password, shown only once", status=201, tag="tenants",
             request={"type": "object", "required": ["slug"], "additionalProperties": False,
                      "properties": {"slug": SLUG_SCHEMA, "tier": TIER_NAMES}},
             response={"type": "object", "required": ["slug", "tier", "status", "password"],
                       "properties": {**TENANT_PROPERTIES, "password": {"type": "string"}}}),
    Endpoint("GET", T, show_tenant, "A tenant: tier, limits, sessions and databases",
             access="tenant", tag="tenants", response=TENANT),
    Endpoint("PATCH", T, update_tenant, "Change a tenant's tier or suspend/resume it",
             tag="tenants", response=TENANT,
             request={"type": "object", "additionalProperties": False, "properties": {
                 "tier": TIER_NAMES, "status": {"type": "string",
                                                "enum": ["active", "suspended"]}}}),
    Endpoint("DELETE", T, delete_tenant, "Delete a tenant and drop its databases upstream",
             status=204, tag="tenants"),
    Endpoint("POST", T + "/credentials", rotate_credentials, "A new generated password "
             "(shown only once; open connections stay, tenant tokens are revoked)",
             access="tenant", tag="tenants", response=PASSWORD),
    Endpoint("GET", T + "/databases", list_databases, "A tenant's databases",
             access="tenant", params=(LIMIT, CURSOR), response=page_schema(DATABASE),
             tag="databases"),
    Endpoint("POST", T + "/databases", create_database, "Provision a database through its "
             "backend; the response has the connection string (and the tenant's password "
             "when it had none yet)", access="tenant", status=201, tag="databases",
             response=CREATED_DATABASE,
             request={"type": "object", "required": ["name", "kind"],
                      "additionalProperties": False, "properties": {
                          "name": NAME_SCHEMA, "kind": KIND_NAMES, "backend": BACKEND_NAMES,
                          "options": {"type": "object", "description": "backend-specific "
                                      "provisioning options, e.g. convex deployment_url, "
                                      "admin_key, client_auth"}}}),
    Endpoint("GET", D, show_database, "A database: state, connection string, storage",
             access="tenant", tag="databases", response=DATABASE),
    Endpoint("DELETE", D, delete_database, "Drop a database upstream and forget it",
             access="tenant", status=204, tag="databases"),
    Endpoint("POST", D + "/branch", branch_database, "Create a branch of this database",
             access="tenant", status=201, tag="databases", response=CREATED_DATABASE,
             request={"type": "object", "required": ["name"], "additionalProperties": False,
                      "properties": {"name": NAME_SCHEMA}}),
    Endpoint("POST", D + "/sleep", _lifecycle("sleep"), "Ask the lifecycle to put the "
             "database to sleep now", access="tenant", status=202, tag="databases"),
    Endpoint("POST", D + "/wake", _lifecycle("wake"), "Ask the lifecycle to wake the database "
             "now", access="tenant", status=202, tag="databases"),
    Endpoint("POST", D + "/console", console, "Run one command as the tenant, through the "
             "layers: SQL (Postgres, Neon), a Redis command, a MongoDB command document, a "
             "Convex function call", access="tenant", tag="databases",
             errors=(403, 429, 503, 504, 507),
             request={"type": "object", "additionalProperties": False, "properties": {
                 "sql": {"type": "string", "maxLength": 100_000},
                 "command": {"type": "array", "items": {"type": "string", "maxLength": 10_000},
                             "maxItems": 64},
                 "document": {"type": "object"},
                 "function": {"type": "object", "properties": {
                     "kind": {"enum": ["query", "mutation", "action"]},
                     "path": {"type": "string", "maxLength": 200},
                     "args": {"type": "object"}}}}},
             response={"type": "object", "required": ["kind", "duration_ms"], "properties": {
                 "kind": {"type": "string"}, "duration_ms": NUM,
                 "columns": {"type": "array"}, "rows": {"type": "array"},
                 "command": {"type": ["string", "null"]}, "result": {}}}),
    Endpoint("GET", T + "/usage", usage, "Usage per database this month, with the invoice "
             "preview", access="tenant", tag="usage",
             params=(MONTH, Param("database", {"type": "string", "maxLength": 64})),
             response={"type": "object", "required": ["tenant", "month", "databases",
                                                      "invoice"]}),
    Endpoint("GET", T + "/sessions", tenant_sessions, "The tenant's open sessions on this "
             "gateway", access="tenant", tag="usage",
             response={"type": "object", "required": ["tenant", "count", "sessions"]}),
    Endpoint("GET", "/admin/sessions", all_sessions, "Open sessions per tenant on this "
             "gateway", tag="usage"),
    Endpoint("GET", "/admin/decisions", decisions, "Layer decision counters and the most "
             "recent refusals (a tenant sees its own refusals)", access="any", tag="usage",
             params=(Param("tenant", SLUG_SCHEMA), Param("layer", {"type": "string",
                                                                   "maxLength": 64}), LIMIT),
             response={"type": "object", "required": ["counters", "recent"]}),
    Endpoint("GET", "/admin/stats", stats, "Live counters for Studio's charts (a tenant sees "
             "its own)", access="any", tag="usage", params=(Param("tenant", SLUG_SCHEMA),),
             response={"type": "object", "required": ["time", "operations", "rejections",
                                                      "sessions"]}),
    Endpoint("GET", "/admin/audit", audit, "The audit log: refusals, failed logins, tier "
             "changes, suspensions, sleep and wake (a tenant sees its own)", access="any",
             tag="audit", params=(Param("event", {"type": "string", "maxLength": 64}),
                                  Param("tenant", SLUG_SCHEMA),
                                  Param("q", {"type": "string", "maxLength": 200},
                                        "Text search."), LIMIT, CURSOR),
             response={**page_schema({"type": "object"}),
                       "required": ["items", "next_cursor", "kept", "suppressed_total"]}),
    Endpoint("GET", "/admin/backends", backends, "The backends databases can be created on",
             access="any", tag="gateway", response={"type": "array", "items": {
                 "type": "object", "required": ["name", "kind", "capabilities"]}}),
    Endpoint("GET", "/admin/layers", layers, "The layer chain and each layer's state",
             tag="gateway", response={"type": "array"}),
    Endpoint("POST", "/admin/reload", reload, "Reload the config file (tiers, layer options, "
             "backends, seeded tenants)", tag="gateway", errors=(422, 501)),
]
