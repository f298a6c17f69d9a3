"""``[backends.<id>]`` options of a convex backend."""

from __future__ import annotations

import attrs

import ogelkit
from ogelkit import Duration


def _costs_ok(_inst: object, _attr: attrs.Attribute, value: dict[str, float]) -> None:
    for path, cost in value.items():
        if ":" not in path:
            raise ValueError(f'function_costs key "{path}" is not a udfPath ("module:function")')
        if not isinstance(cost, int | float) or cost < 0:
            raise ValueError(f'function_costs["{path}"] must be a number >= 0')


@attrs.define(kw_only=True)
class ConvexOptions:
    domain: str = ogelkit.option(
        "convex.localhost",
        doc="Host suffix of tenant databases on the gateway's HTTP port: a request for "
            "<db>--<tenant>.<domain> goes to that tenant database (the platform token "
            "must still match). Clients that cannot use such names route by token alone.")
    public_scheme: str = ogelkit.option(
        "http", doc='Scheme printed in the URLs `ogelkit databases create` shows ("https" '
                    "behind a TLS-terminating proxy).")
    deployment_url: str = ogelkit.option(
        "", doc="Default deployment (https://<name>.convex.cloud or a self-hosted URL) for "
                "databases created without --deployment-url, e.g. seeded from the config.")
    admin_key: str = ogelkit.option(
        "", doc="Admin or deploy key of deployment_url. Keys given at creation are stored "
                "encrypted in the control plane with the database.")
    client_auth: str = ogelkit.option(
        "platform", validator=attrs.validators.in_(("platform", "user")),
        doc='Who authenticates clients of this backend\'s databases (a database created with '
            '--client-auth overrides it). "platform": every client presents the database\'s '
            "platform token and the gateway authenticates upstream with the admin key "
            '(functions run as admin). "user": for deployments configured for end-user auth '
            "(their auth.config lists the tenant's identity provider): clients route by host "
            "and their own Authenticate (a user JWT, or none) is passed through, so functions "
            "see ctx.auth as on the deployment itself; the platform token still works and is "
            "still swapped for the admin key.")
    query_cost: float = ogelkit.option(
        1.0, doc="Estimated cost of one query call (the cost layer compares it with the "
                 "tier's cost_ceiling).")
    mutation_cost: float = ogelkit.option(10.0, doc="Estimated cost of one mutation call.")
    action_cost: float = ogelkit.option(
        100.0, doc="Estimated cost of one action call, and of /api/function and /api/run "
                   "calls whose kind the gateway cannot know.")
    function_costs: dict[str, float] = ogelkit.option(
        factory=dict, validator=_costs_ok,
        doc='Cost per udfPath, overriding the class costs, e.g. {"reports:build" = 5000}.')
    connect_timeout: Duration = ogelkit.option(
        10.0, doc="Deadline for opening the upstream WebSocket to the deployment.")
    http_timeout: Duration = ogelkit.option(
        120.0, doc="Deadline of one upstream HTTP API call (the timeout layer's tier "
                   "deadline applies first).")
    ping_interval: Duration = ogelkit.option(
        15.0, doc="The gateway sends a sync Ping to a client that got no message for this "
                  "long (clients reconnect after 30 s of silence).")
    usage_interval: Duration = ogelkit.option(
        10.0, doc="How often the per-udfPath usage totals are written to the control plane.")
    max_message_size: int = ogelkit.option(
        16 * 1024 * 1024, doc="Largest sync message or HTTP body relayed, in bytes.")
    team_id: str = ogelkit.option(
        "", doc="Convex team whose Management API creates deployments: with it set, "
                "`databases create --kind convex` without --deployment-url creates a project "
                "with one deployment and a deploy key for the gateway, and deleting the "
                "database deletes the project. Empty: databases register existing "
                "deployments only.")
    team_token_env: str = ogelkit.option(
        "CONVEX_TEAM_TOKEN", doc="Environment variable holding the team access token of "
                                 "team_id (never put the token in the config file).")
    management_url: str = ogelkit.option(
        "https://api.convex.dev/v1", doc="Base URL of the Management API.")
    deployment_type: str = ogelkit.option(
        "prod", validator=attrs.validators.in_(("dev", "prod")),
        doc='Type of the deployment each created project starts with ("dev" or "prod").')
    project_prefix: str = ogelkit.option(
        "ogelkit", doc="Created projects are named <project_prefix>-<tenant>-<database>.")
