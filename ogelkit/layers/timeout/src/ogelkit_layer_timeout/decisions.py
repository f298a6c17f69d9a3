"""Prometheus decision counters of one layer, label children resolved once.

``Counter.labels(...)`` hashes and looks up its labels on every call (microseconds); the
children are resolved the first time a (decision, reason, tier) combination occurs and kept
in a dict. Labels are bounded (no tenant id).
"""

from __future__ import annotations

from typing import Any


class Decisions:
    __slots__ = ("_children", "_counter", "_layer")

    def __init__(self, metrics: Any, layer: str):
        self._counter = metrics.decisions
        self._layer = layer
        self._children: dict[tuple[str, str, str], Any] = {}

    def child(self, decision: str, reason: str, tier: str) -> Any:
        key = (decision, reason, tier)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(self._layer, decision, reason, tier)
        return child

    def count(self, decision: str, reason: str, tier: str) -> None:
        self.child(decision, reason, tier).inc()
