"""Entry point ``intelligence`` of ogelkit-layer-intelligence: the layer and its commands."""

from __future__ import annotations

import ogelkit
from ogelkit_layer_intelligence.layer import IntelligenceLayer


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(IntelligenceLayer)


@ogelkit.hookimpl
def ogelkit_add_commands(cli) -> None:
    """``ogelkit tenants advise TENANT`` and ``ogelkit intelligence calibration``."""
    from ogelkit_layer_intelligence.cli import add_commands

    add_commands(cli)


@ogelkit.hookimpl
def ogelkit_admin_endpoints(context) -> list:
    """``GET /admin/tenants/{slug}/advice``: the tier advice Studio shows."""
    from ogelkit.admin import Endpoint, Param, Problem
    from ogelkit_layer_intelligence.cli import layer_options
    from ogelkit_layer_intelligence.report import tenant_advice

    async def advice(call):
        from ogelkit import NotFound
        days = float(call.query.get("days", 30))
        try:
            found, calibration, tier = await tenant_advice(
                call.ctx.store, call.ctx.tiers, layer_options(call.ctx.config), call.slug, days)
        except NotFound:
            raise Problem(404, "not_found", f'no tenant "{call.slug}"') from None
        return {**found.as_dict(), "tier": tier.name, "days": days, "calibration": calibration}

    return [Endpoint("GET", "/admin/tenants/{slug}/advice", advice,
                     "Tier advice with the reasons, from recent usage and refusals",
                     access="tenant", tag="usage",
                     params=(Param("days", {"type": "integer", "minimum": 1, "maximum": 366},
                                   "Look back this many days (default 30)."),),
                     response={"type": "object", "required": ["recommended_tier", "tier"]})]
