"""Prometheus metrics of one gateway (its own registry, so tests and replicas don't mix).

Labels are bounded sets (protocol, layer, decision, reason, tier, outcome): never a tenant
id, which would make series unbounded. Per-tenant figures come from the usage store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Decisions", "FastCounter", "Metrics"]


class _Child:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class FastCounter:
    """A labelled counter for the request path: ``labels(...)`` children are plain numbers.

    ``prometheus_client.Counter`` takes a lock on every increment (~0.3 us); the gateway
    counts from one event-loop thread, so its per-request counters are bare attribute
    additions, read by a collector at scrape time. Same ``labels(...).inc()`` API.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        registry.register(self)

    def labels(self, *values: object) -> _Child:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[key] = _Child()
        return child

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        """(label values, count) of every child so far."""
        return [(key, child.value) for key, child in list(self._children.items())]

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        yield family


class Decisions:
    """One layer's decision counters, children resolved once per (decision, reason, tier)."""

    __slots__ = ("_children", "_counter", "_layer")

    def __init__(self, metrics: Metrics, layer: str):
        self._counter = metrics.decisions
        self._layer = layer
        self._children: dict[tuple[str, str, str], _Child] = {}

    def child(self, decision: str, reason: str, tier: str) -> _Child:
        key = (decision, reason, tier)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(self._layer, decision, reason, tier)
        return child

    def count(self, decision: str, reason: str, tier: str) -> None:
        self.child(decision, reason, tier).inc()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = FastCounter(
            "ogelkit_connections", "Client connections by protocol and outcome "
            "(accepted, rejected, auth_failed, error).", ["protocol", "outcome"], registry=r)
        self.connections_active = Gauge(
            "ogelkit_connections_active", "Open client connections.", ["protocol"], registry=r)
        self.operations = FastCounter(
            "ogelkit_operations", "Operations by protocol and outcome (ok, error, rejected).",
            ["protocol", "outcome"], registry=r)
        self.decisions = FastCounter(
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
        self.auth_failure_padding = Histogram(
            "ogelkit_auth_failure_padding_seconds", "Time a failed plain-password check "
            "(Redis AUTH) waited before its answer, so that every failure answers as late as "
            "the slowest recent one (an unknown user name cannot be told from a known one).",
            registry=r, buckets=(0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1))
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
        # -- the database lifecycle (ogelkit.lifecycle); no tenant labels ------------------
        self.databases = Gauge(
            "ogelkit_databases", "Databases by lifecycle state (active, idle, asleep, "
            "waking), as this gateway last read them from the control plane.", ["state"],
            registry=r)
        self.cold_start_seconds = Histogram(
            "ogelkit_cold_start_seconds", "Time to wake a sleeping database (backend.wake), "
            "by database kind.", ["kind"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30))
        self.database_wakes = Counter(
            "ogelkit_database_wakes", "Wakes of sleeping databases by kind and outcome "
            "(ok, failed).", ["kind", "outcome"], registry=r)
        self.database_sleeps = Counter(
            "ogelkit_database_sleeps", "Databases put to sleep by the lifecycle scheduler, "
            "by kind.", ["kind"], registry=r)
        self.wake_timeouts = Counter(
            "ogelkit_wake_timeouts", "Clients refused because their database did not wake "
            "within [lifecycle] wake_timeout, by kind.", ["kind"], registry=r)
        self.lifecycle_leader = Gauge(
            "ogelkit_lifecycle_leader", "1 when this gateway runs the lifecycle scheduler "
            "(holds the lease).", registry=r)
        self.audit_suppressed = Counter(
            "ogelkit_audit_suppressed", "Audit events not written to the log because of "
            "[audit] log_rate (still kept for GET /admin/audit).", registry=r)
        self.ready = Gauge("ogelkit_ready", "1 when the gateway is ready to serve.", registry=r)
        self.oneport = Counter(
            "ogelkit_oneport_connections_total", "Connections on the one port ([listen] port) "
            "by the protocol they were dispatched to (tls: terminated, then sniffed again; "
            "none: closed unidentified).", ["protocol"], registry=r)
        self.oneport_sniff_seconds = Histogram(
            "ogelkit_oneport_sniff_seconds", "Time from accept to dispatch on the one port.",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0), registry=r)

    def decision(self, layer: str, decision: str, reason: str, tier: str) -> None:
        self.decisions.labels(layer, decision, reason, tier).inc()

    def decision_counts(self) -> list[tuple[tuple[str, ...], float]]:
        """(labels (layer, decision, reason, tier), count) of every layer decision so far."""
        return self.decisions.items()

    def render(self) -> bytes:
        return generate_latest(self.registry)
