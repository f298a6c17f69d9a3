"""What a layer does when its shared state store (Redis, ``[state] url``) is down.

Every layer that keeps state in Redis has a ``state_down = "open" | "closed"`` option and
one ``OutagePolicy``: each failed call asks it for a decision; it logs once per outage
episode (not once per request) and counts every decision in
``ogelkit_state_unavailable_total{layer, policy}``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from ogelkit.model import Reason, Reject

if TYPE_CHECKING:
    from ogelkit.metrics import Metrics

log = logging.getLogger("ogelkit.state")

Policy = Literal["open", "closed"]


class OutagePolicy:
    def __init__(self, layer: str, policy: Policy, metrics: Metrics):
        self.layer = layer
        self.policy = policy
        self._counter = metrics.state_unavailable.labels(layer, policy)
        self.down_since: float | None = None
        self.episodes = 0

    @property
    def fail_open(self) -> bool:
        return self.policy == "open"

    def failed(self, exc: BaseException) -> None:
        """Record a failed state call. Raises ``Reject(unavailable)`` when failing closed;
        returns (the caller then admits) when failing open."""
        self._counter.inc()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.episodes += 1
            log.warning("shared state unavailable, failing %s", self.policy,
                        extra={"layer": self.layer, "policy": self.policy, "error": repr(exc)})
        if not self.fail_open:
            raise Reject(Reason.UNAVAILABLE, "the gateway's shared state is unavailable",
                         detail=f"layer {self.layer} fails closed while it is down",
                         hint="Retry in a few seconds.", retry_after=1.0, layer=self.layer)

    def succeeded(self) -> None:
        """Record a successful state call; ends the outage episode if one was running."""
        if self.down_since is not None:
            log.warning("shared state available again",
                        extra={"layer": self.layer,
                               "outage_seconds": round(time.monotonic() - self.down_since, 3)})
            self.down_since = None

    def describe(self) -> dict[str, object]:
        return {"state_down_policy": self.policy, "state_down": self.down_since is not None,
                "state_outages": self.episodes}
