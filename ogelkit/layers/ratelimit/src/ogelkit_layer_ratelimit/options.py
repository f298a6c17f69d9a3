"""Options of the ratelimit layer (``[[layers]] type = "ratelimit"``)."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, option, validators


@attrs.define(kw_only=True)
class RatelimitOptions:
    mode: Literal["reject", "delay"] = option(
        "reject",
        doc='"reject" refuses an operation over the rate at once, telling the client when to '
            'retry; "delay" holds it back until the bucket allows it (up to max_delay) and '
            'refuses only beyond that. Reject by default: a gateway that holds requests '
            'ties up client connections and hides the limit from the application.')
    max_delay: Duration = option(
        1.0, validator=validators.positive,
        doc="Delay mode only: the longest an operation is held back; one that would have "
            "to wait longer is refused.")
    scope: Literal["tenant", "database"] = option(
        "tenant",
        doc='What one bucket covers: "tenant" (all the tenant\'s databases and connections '
            'together, the tier\'s meaning) or "database" (each tenant database apart).')
    state_down: Literal["open", "closed"] = option(
        "open",
        doc='When Redis is down: "open" decides with this replica\'s in-process bucket (each '
            'replica then admits up to the full rate), "closed" refuses every limited '
            'operation. Open by default: a Redis outage must not stop every tenant\'s queries.')
    state_retry: Duration = option(
        1.0, validator=validators.positive,
        doc="After a failed Redis call, how long to decide by the state_down policy before "
            "trying Redis again, so a dead Redis does not cost a failed call per operation.")
    prefetch: Duration = option(
        0.01,
        doc="Shared state only: a replica may take this much of the tier's rate from Redis "
            "ahead of use (10ms of 10,000/s = 100 operations; at most a quarter of the burst) "
            "and admit the next operations from it without a round trip; unused ones expire "
            "after 100ms. Tokens are taken under the same atomic rule, so the limit holds; "
            "tiers under 100/s get none (every operation asks Redis). 0 disables it.")
    key_prefix: str = option(
        "o7s:",
        doc="Prefix of every Redis key of this layer: with the default, the bucket of "
            "tenant acme lives in o7s:rl:acme (o7s:rl:acme/main with scope = database).")
