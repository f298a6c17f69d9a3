"""The intelligence layer: watches every other layer's decisions.

- **Auth-failure bursts**: ``auth_failures`` failed logins for one tenant from one client
  address within ``auth_window`` ban that (tenant, address) for ``ban`` (then longer each
  time). Bans are enforced in ``on_auth``, before the password is checked, so a guessing
  client costs no PBKDF2 work.
- **Retry storms**: a tenant whose refusals by other layers exceed ``storm_threshold`` per
  second is backed off (new connections and operations refused with a retry-after),
  escalating while the storm goes on.
- **Calibration**: (``op.cost``, ``op.duration``) pairs per backend suggest a cost ceiling
  per tier from its p99 latency target (see ``calibration``).
- **Advice** is computed by the CLI from the control plane (see ``advice``).

With ``[state]`` Redis, failures and blocks are counted and kept in Redis (one Lua script
per decision) so every replica enforces them; without it, or while Redis is down with
``state_down = "open"``, the same logic runs in this process.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ogelkit import Layer, LayerReport, OutagePolicy, Reason, Reject, format_duration
from ogelkit_layer_intelligence.calibration import Samples, report
from ogelkit_layer_intelligence.guard import Block, BurstCounter, Escalation, Escalator, RateMeter
from ogelkit_layer_intelligence.options import IntelligenceOptions
from ogelkit_layer_intelligence.shared import STATE_ERRORS, SharedBlocks

if TYPE_CHECKING:
    from ogelkit import Operation, Session

log = logging.getLogger("ogelkit.layer.intelligence")

#: Refusals that count toward a retry storm. Not: failed logins (they have bans of their
#: own), unknown tenants (no tenant to back off), timeouts (a slow query is not a retry),
#: the gateway's own trouble (unavailable, shutdown), nor this layer's own refusals, nor
#: policy refusals (forbidden: a command refused by design). A policy refusal costs the
#: gateway a lookup and the upstream nothing, and retrying it is a client bug, not load:
#: counting it would let one connection looping on e.g. CONFIG back off the tenant's
#: allowed traffic on every connection (issue 16, item 6). Its cost is bounded by the
#: rate layer like any other operation.
STORM_REASONS = frozenset({Reason.CONNECTIONS, Reason.RATE, Reason.COST, Reason.QUOTA,
                           Reason.SUSPENDED, Reason.BANNED})

REPORT_LAYER = "intelligence"  # LayerReport.layer of the calibration reports
MAX_OUTBOX = 10_000
CLAIM_LIMIT = 100  # characters of a claimed tenant name kept in keys


def calibration_subject(backend: str) -> str:
    return f"calibration:{backend}"


def _escalations(o: IntelligenceOptions) -> tuple[Escalation, Escalation]:
    """(ban, retry-storm back-off) escalation rules from the options."""
    return (Escalation(o.ban, o.ban_factor, o.max_ban, o.ban_memory),
            Escalation(o.backoff, o.backoff_factor, o.max_backoff, o.backoff_memory))


class IntelligenceLayer(Layer[IntelligenceOptions]):
    """O7s layer 7: bans, back-offs, calibration."""

    type_name = "intelligence"
    batches = True  # a refused batch is op.count refusals; batches carry no cost sample
    Config = IntelligenceOptions

    def __init__(self, config: IntelligenceOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        o = self.options = config
        self._ban_escalation, self._storm_escalation = _escalations(o)
        self._failures = BurstCounter(o.auth_failures, o.auth_window)
        self._bans = Escalator(self._ban_escalation)
        self._storms = Escalator(self._storm_escalation)
        self._rates = RateMeter(o.storm_window)
        self._blocks: dict[str, Block] = {}  # decided on this replica
        self._remote: dict[str, Block] = {}  # read from Redis (every replica's)
        self._samples: dict[str, Samples] = {}
        self._policy = OutagePolicy(name, o.state_down, context.metrics)
        self._shared: SharedBlocks | None = None
        self._state_error: BaseException | None = None
        self._outbox: deque[tuple[str, str, str]] = deque()
        self._wake: anyio.Event | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        self.counts = {"auth_failures": 0, "bans": 0, "storms": 0, "refused_banned": 0,
                       "refused_storm": 0, "refused_state_down": 0}

    def reconfigure(self, options: IntelligenceOptions) -> None:
        """Config reload: ban and back-off escalation, thresholds and reporting take effect
        at once; bans already decided keep their end, and a counting window whose size
        changed starts empty."""
        for fixed in ("shared", "key_prefix"):
            if getattr(options, fixed) != getattr(self.options, fixed):
                raise ValueError(f"{fixed} decides where bans are shared: restart to change it")
        unknown = sorted(set(options.latency_targets) - set(self.context.tiers))
        if unknown:
            raise ValueError(f"latency_targets.{unknown[0]} names no tier")
        old, o = self.options, options
        self.config = self.options = o
        self._ban_escalation, self._storm_escalation = _escalations(o)
        self._bans.escalation = self._ban_escalation
        self._storms.escalation = self._storm_escalation
        if (o.auth_failures, o.auth_window) != (old.auth_failures, old.auth_window):
            self._failures = BurstCounter(o.auth_failures, o.auth_window)
        if o.storm_window != old.storm_window:
            self._rates = RateMeter(o.storm_window)
        self._policy = OutagePolicy(self.name, o.state_down, self.context.metrics)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        unknown = sorted(set(self.options.latency_targets) - set(self.context.tiers))
        if unknown:
            raise ValueError(f"layer {self.name}: latency_targets.{unknown[0]} names no tier "
                             f"(tiers: {', '.join(self.context.tiers)})")
        self._wake = anyio.Event()
        client = self.context.state() if self.options.shared else None
        if client is not None:
            self._shared = SharedBlocks(client, self.options.key_prefix)
            try:
                await self._shared.load()
                self._state_up()
            except STATE_ERRORS as exc:  # not fatal: the policy decides what happens
                self._state_down(exc)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self._shared is not None:
                tg.start_soon(self._forever, self._outbox_loop)
            if self.options.report_interval > 0:
                tg.start_soon(self._forever, self._report_loop)
            await self._forever(self._sync_loop)

    async def _forever(self, loop) -> None:
        """Run a background loop; a bug in it is logged and the loop restarted, never
        allowed to take the gateway down."""
        while True:
            try:
                await loop()
            except Exception:
                log.exception("intelligence loop %s failed; restarting it", loop.__name__,
                              extra={"layer": self.name})
                await anyio.sleep(self.options.sync_interval)

    async def close(self) -> None:
        if self.options.report_interval > 0 and self._samples:
            with anyio.move_on_after(5):
                await self.write_reports()

    # -- access phases -----------------------------------------------------------------------
    def on_auth(self, session: Session) -> None:
        if self._state_error is not None and self._shared is not None:
            if not self._policy.fail_open:
                self.counts["refused_state_down"] += 1
                self._decision(session, "rejected", "state_down")
            self._policy.failed(self._state_error)  # raises when failing closed
        if not self._blocks and not self._remote:
            return
        now = time.monotonic()
        claim = self._claim(session)
        host = session.client_host
        block = self._blocked(f"a|{claim}|{host}", now)
        if block is not None:
            self.counts["refused_banned"] += 1
            self._decision(session, "rejected", "banned")
            left = block.until - now
            level = f" (ban #{block.level})" if block.level else ""
            raise Reject(
                Reason.BANNED, "too many failed logins: try again later",
                detail=f"{self.options.auth_failures} failed logins within "
                       f"{format_duration(self.options.auth_window)} for this tenant from "
                       f"{host}; blocked for {format_duration(round(block.duration, 3))}{level}",
                hint=f"Retry after {math.ceil(left * 1000)} ms, with the right password.",
                retry_after=left, layer=self.name)
        self._check_storm(session, claim, now)

    def on_operation(self, op: Operation) -> None:
        if self._blocks or self._remote:
            session = op.session
            self._check_storm(session, session.tenant_slug, time.monotonic())
        return None

    def _check_storm(self, session: Session, tenant: str | None, now: float) -> None:
        if tenant is None:
            return
        block = self._blocked(f"s|{tenant}", now)
        if block is None:
            return
        self.counts["refused_storm"] += 1
        self._decision(session, "rejected", "storm")
        left = block.until - now
        raise Reject(
            Reason.BANNED, "too many refused requests: backing off",
            detail=f"more than {self.options.storm_threshold:g} refusals per second over "
                   f"{format_duration(self.options.storm_window)}; backing off for "
                   f"{format_duration(round(block.duration, 3))}",
            hint=f"Retry after {math.ceil(left * 1000)} ms, and back off exponentially "
                 "when refused.", retry_after=left, layer=self.name)

    # -- log phases --------------------------------------------------------------------------
    def on_complete(self, op: Operation) -> None:
        rej = op.rejection
        if rej is not None:
            if rej.layer != self.name and rej.reason in STORM_REASONS:
                self._refused(op.session, op.count)
            return
        cost = op.cost
        if cost is not None and op.error is None:
            backend = op.session.backend
            if backend is not None:
                samples = self._samples.get(backend.name)
                if samples is None:
                    samples = self._samples[backend.name] = Samples(
                        self.options.calibration_samples)
                ended = op.ended
                samples.add(cost, (ended if ended is not None else time.monotonic()) - op.started)

    def on_disconnect(self, session: Session) -> None:
        rej = session.rejection
        if rej is None or rej.layer == self.name:
            return
        if rej.reason == Reason.AUTH:
            self._auth_failed(session)
        elif rej.reason in STORM_REASONS:
            self._refused(session)

    # -- detection ---------------------------------------------------------------------------
    def _auth_failed(self, session: Session) -> None:
        self.counts["auth_failures"] += 1
        key = f"a|{self._claim(session)}|{session.client_host}"
        tier = session.tier.name if session.tier is not None else "unknown"
        self._dispatch("fail", key, tier)

    def _refused(self, session: Session, n: int = 1) -> None:
        tenant = session.tenant_slug
        if tenant is None:
            return
        key = f"s|{tenant}"
        now = time.monotonic()
        if self._blocked(key, now) is not None:
            return  # already backing off: refusals now are the back-off working
        if self._rates.add(tenant, now, n) >= self.options.storm_threshold:
            self._rates.reset(tenant)
            tier = session.tier.name if session.tier is not None else "unknown"
            self._dispatch("storm", key, tier)

    def _dispatch(self, kind: str, key: str, tier: str) -> None:
        """Decide in Redis when it is shared and up, else here and now."""
        if (self._shared is not None and self._state_error is None
                and len(self._outbox) < MAX_OUTBOX):
            self._outbox.append((kind, key, tier))
            assert self._wake is not None
            self._wake.set()
        else:
            self._decide_locally(kind, key, tier)

    def _decide_locally(self, kind: str, key: str, tier: str) -> None:
        now = time.monotonic()
        if kind == "fail":
            if self._failures.hit(key, now) is None:
                return
            block = self._bans.block(key, now)
        else:
            block = self._storms.block(key, now)
        self._start(kind, key, block, tier)

    def _start(self, kind: str, key: str, block: Block, tier: str) -> None:
        self._blocks[key] = block
        what = "auth_burst" if kind == "fail" else "retry_storm"
        self.counts["bans" if kind == "fail" else "storms"] += 1
        self.context.metrics.decision(self.name, "detected", what, tier)
        parts = key.split("|")
        event = {"event": "ban" if kind == "fail" else "backoff", "tenant": parts[1],
                 "address": parts[2] if len(parts) > 2 else None, "level": block.level,
                 "seconds": round(block.duration, 3), "at": time.time()}
        self.recent.append(event)
        # "level" would overwrite the JSON log line's own level field: renamed in the record only.
        fields = {("escalation_level" if k == "level" else k): v for k, v in event.items()}
        log.warning("auth-failure burst: banned" if kind == "fail" else "retry storm: backing off",
                    extra={"layer": self.name, **fields})

    # -- shared state ------------------------------------------------------------------------
    async def _outbox_loop(self) -> None:
        shared = self._shared
        assert shared is not None and self._wake is not None
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._outbox:
                kind, key, tier = self._outbox.popleft()
                if self._state_error is not None:
                    self._decide_locally(kind, key, tier)
                    continue
                try:
                    if kind == "fail":
                        started, level, seconds = await shared.failure(
                            key, uuid.uuid4().hex, self._ban_escalation,
                            self.options.auth_window, self.options.auth_failures)
                    else:
                        started, level, seconds = await shared.block(key, self._storm_escalation)
                except STATE_ERRORS as exc:
                    self._state_down(exc)
                    self._decide_locally(kind, key, tier)
                    continue
                self._state_up()
                now = time.monotonic()
                if started:
                    self._start(kind, key, Block(now + seconds, level, seconds), tier)
                elif kind == "storm" and seconds > 0:  # another replica started it
                    self._blocks[key] = Block(now + seconds, 0, seconds)

    async def _sync_loop(self) -> None:
        while True:
            if self._shared is not None:
                try:
                    live = await self._shared.live()
                except STATE_ERRORS as exc:
                    self._state_down(exc)
                else:
                    self._state_up()
                    now = time.monotonic()
                    self._remote = {k: Block(now + left, 0, left) for k, left in live.items()}
            self._prune(time.monotonic())
            await anyio.sleep(self.options.sync_interval)

    def _state_down(self, exc: BaseException) -> None:
        self._state_error = exc
        try:
            self._policy.failed(exc)  # logs once per episode and counts
        except Reject:
            pass  # failing closed is enforced in on_auth

    def _state_up(self) -> None:
        if self._state_error is not None or self._policy.down_since is not None:
            self._state_error = None
            self._policy.succeeded()

    # -- calibration -------------------------------------------------------------------------
    def calibration(self) -> dict[str, dict[str, Any]]:
        """The current calibration report of every backend seen with costed operations."""
        targets = dict(self.options.latency_targets)
        ceilings = {t: self.context.tiers[t].cost_ceiling for t in targets
                    if t in self.context.tiers}
        return {backend: report(samples, targets, ceilings,
                                min_samples=self.options.calibration_min_samples)
                for backend, samples in sorted(self._samples.items())}

    async def write_reports(self) -> int:
        """Store the calibration reports in the control plane for the CLI."""
        written = 0
        for backend, body in self.calibration().items():
            await self.context.store.put_layer_report(LayerReport(
                REPORT_LAYER, calibration_subject(backend), body,
                gateway=self.context.gateway_id, updated_at=time.time()))
            written += 1
        return written

    async def _report_loop(self) -> None:
        while True:
            await anyio.sleep(self.options.report_interval)
            if not self._samples:
                continue
            try:
                await self.write_reports()
            except Exception as exc:
                log.warning("calibration report not stored", extra={
                    "layer": self.name, "error": repr(exc)})

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _claim(session: Session) -> str:
        """The tenant a connection claims to be (known or not), bounded in length."""
        return (session.tenant_slug or session.user or "")[:CLAIM_LIMIT]

    def _blocked(self, key: str, now: float) -> Block | None:
        block = self._blocks.get(key)
        if block is not None and block.until > now:
            return block
        block = self._remote.get(key)
        if block is not None and block.until > now:
            return block
        return None

    def _decision(self, session: Session, decision: str, reason: str) -> None:
        tier = session.tier.name if session.tier is not None else "unknown"
        self.context.metrics.decision(self.name, decision, reason, tier)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._blocks.items() if b.until <= now]:
            del self._blocks[key]
        self._failures.prune(now)
        self._bans.prune(now)
        self._storms.prune(now)
        self._rates.prune(now)

    def blocks(self) -> list[dict[str, Any]]:
        """Live bans and back-offs known to this replica (admin API, tests)."""
        now = time.monotonic()
        out = {}
        for source in (self._remote, self._blocks):
            for key, block in source.items():
                if block.until > now:
                    parts = key.split("|")
                    out[key] = {"kind": "ban" if parts[0] == "a" else "backoff",
                                "tenant": parts[1], "address": parts[2] if len(parts) > 2 else None,
                                "seconds_left": round(block.until - now, 3),
                                "level": block.level or None}
        return sorted(out.values(), key=lambda b: -b["seconds_left"])

    def describe(self) -> dict[str, Any]:
        return {**self.counts, "calibration_pairs": sum(s.seen for s in self._samples.values()),
                "blocks": self.blocks()[:50], "recent": list(self.recent),
                "shared": self._shared is not None, "outbox": len(self._outbox),
                "calibration": self.calibration(), **self._policy.describe()}
