"""Options of the gatekeeper layer (``[[layers]] type = "gatekeeper"``)."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, option, validators


@attrs.define(kw_only=True)
class GatekeeperOptions:
    per_database: bool = option(
        False,
        doc="Count connections per tenant database instead of per tenant: each of a "
            "tenant's databases gets the tier's connection cap of its own.")
    queue: Duration | Literal["tier"] = option(
        "tier",
        doc='How long a client waits for a free slot at the cap before it is refused; '
            '"tier" uses the tier\'s connection_queue (0 s on free and starter, 5 s on pro, '
            '30 s on enterprise by default), a duration overrides it for every tier.')
    queue_limit: int = option(
        100, validator=validators.not_negative,
        doc="Most clients of one tenant (or tenant database) waiting at once on this "
            "replica; further clients are refused at once, so a reconnect storm cannot pile "
            "up waiting connections.")
    lease_ttl: Duration = option(
        15.0, validator=validators.positive,
        doc="Shared state only: how long a connection's lease in Redis lives without a "
            "refresh. Each replica refreshes its leases every lease_ttl/3, so the slots of "
            "a replica that died are free again within lease_ttl.")
    queue_poll: Duration = option(
        0.1, validator=validators.positive,
        doc="Shared state only: how often a queued client retries for a slot that a client "
            "of another replica freed (slots freed on the same replica wake it at once).")
    state_down: Literal["open", "closed"] = option(
        "open",
        doc='When Redis is down: "open" admits by this replica\'s own count (each replica '
            'then allows up to the cap), "closed" refuses new connections. Open by default: '
            'a Redis outage must not lock every tenant out of its databases.')
    key_prefix: str = option(
        "o7s:",
        doc="Prefix of every Redis key of this layer: with the default, the leases of "
            "tenant acme live in o7s:conn:acme (o7s:conn:acme/main with per_database).")
