"""Options of the cost layer (``[[layers]] type = "cost"``)."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, option, validators


@attrs.define(kw_only=True)
class CostOptions:
    mode: Literal["enforce", "warn"] = option(
        "enforce",
        doc='"enforce" refuses an operation whose estimated cost is over the tier\'s '
            'cost_ceiling; "warn" admits it and only counts it (decision "warned"), to see '
            'what a ceiling would refuse before enforcing it.')
    cache_size: int = option(
        10_000, validator=validators.positive,
        doc="Most cached estimates (one per tenant database and normalised statement); the "
            "oldest entry goes first when it is full. About 200 bytes each.")
    cache_ttl: Duration = option(
        300.0, validator=validators.positive,
        doc="How long an estimate is reused before the backend is asked again, so plans "
            "that change as tables grow are picked up. Estimates the backend could not "
            "make are retried after 10 s at most.")
    estimate_timeout: Duration = option(
        2.0, validator=validators.positive,
        doc="Longest an operation waits for a first estimate of its statement; after it "
            "the operation passes as \"unknown\" (the estimate is still cached when it "
            "arrives).")
    estimate_unlimited: bool = option(
        False,
        doc="Also estimate operations of tiers without a cost ceiling, so op.cost is set for "
            "the usage and intelligence layers. Off by default: it costs one backend "
            "estimate per new statement for tiers that cannot be refused.")
