"""Prometheus metrics of one gateway (its own registry, so tests and replicas don't mix).

Labels are bounded sets (protocol, layer, decision, reason, tier, outcome): never a tenant
id, which would make series unbounded. Per-tenant figures come from the usage store.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "ogelkit_connections", "Client connections by protocol and outcome "
            "(accepted, rejected, auth_failed, error).", ["protocol", "outcome"], registry=r)
        self.connections_active = Gauge(
            "ogelkit_connections_active", "Open client connections.", ["protocol"], registry=r)
        self.operations = Counter(
            "ogelkit_operations", "Operations by protocol and outcome (ok, error, rejected).",
            ["protocol", "outcome"], registry=r)
        self.decisions = Counter(
            "ogelkit_layer_decisions", "Layer decisions by layer, decision "
            "(allowed, rejected, delayed, warned, queued), reason and tier.",
            ["layer", "decision", "reason", "tier"], registry=r)
        self.state_unavailable = Counter(
            "ogelkit_state_unavailable", "Decisions taken while the shared state store was "
            "down, by layer and policy (open, closed).", ["layer", "policy"], registry=r)
        self.upstream_connections = Gauge(
            "ogelkit_upstream_connections", "Open upstream server connections.",
            ["backend", "state"], registry=r)
        self.upstream_errors = Counter(
            "ogelkit_upstream_errors", "Upstream connect or I/O failures.", ["backend", "kind"],
            registry=r)
        self.checkout_seconds = Histogram(
            "ogelkit_upstream_checkout_seconds", "Time waiting for an upstream connection.",
            ["backend"], registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.usage_flushed = Counter(
            "ogelkit_usage_events_flushed", "Usage events written to the control plane.",
            registry=r)
        self.usage_dropped = Counter(
            "ogelkit_usage_events_dropped", "Usage events given up (control plane unreachable "
            "beyond the usage layer's max_pending, or at shutdown); their amounts are logged.",
            registry=r)
        self.usage_pending = Gauge(
            "ogelkit_usage_events_pending", "Usage events cut from their window and not yet "
            "stored in the control plane.", registry=r)
        self.ready = Gauge("ogelkit_ready", "1 when the gateway is ready to serve.", registry=r)

    def decision(self, layer: str, decision: str, reason: str, tier: str) -> None:
        self.decisions.labels(layer, decision, reason, tier).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
