"""The session layer: compute each session's upstream settings from its tier.

The layer only *computes* ``session.settings``; the front door applies them at every upstream
checkout (Postgres: ``SET`` after checkout, transaction pooling included; MongoDB: a
``maxTimeMS`` on each command; Redis: nothing). A tier change recomputes them, and the front
door picks the new values up at the next checkout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ogelkit import Capability, Layer, Reason, Reject
from ogelkit_layer_session.options import SessionOptions, Value

if TYPE_CHECKING:
    from ogelkit import Session

log = logging.getLogger("ogelkit.layer.session")


def as_text(value: Value) -> str:
    """TOML values as upstream setting text (booleans the way Postgres prints them)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _fill(template: str, session: Session) -> str:
    if "{" not in template:
        return template
    tier = session.tier.name if session.tier is not None else ""
    # Plain replacement, not str.format: values may legitimately contain braces.
    return (template.replace("{tier}", tier)
            .replace("{tenant}", session.tenant_slug or "")
            .replace("{database}", session.database or ""))


class SessionLayer(Layer[SessionOptions]):
    """O7s layer 4: per-tier upstream session settings."""

    type_name = "session"
    Config = SessionOptions

    def __init__(self, config: SessionOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self._take(config)
        self.configured = 0
        self.reconfigured = 0
        self.failures = 0

    def _take(self, config: SessionOptions) -> None:
        self.config = self.options = config
        self._common = {k: as_text(v) for k, v in config.settings.items()}
        self._per_tier = {t: {k: as_text(v) for k, v in table.items()}
                          for t, table in config.tiers.items()}
        self._unset = frozenset(config.unset)

    def reconfigure(self, options: SessionOptions) -> None:
        """Config reload: new settings for every live session from its next checkout."""
        unknown = sorted(set(options.tiers) - set(self.context.tiers))
        if unknown:
            raise ValueError(f"layer {self.name}: tiers.{unknown[0]} names no tier")
        self._take(options)
        for session in list(self.live_sessions()):
            self.on_tier_change(session)

    async def open(self) -> None:
        unknown = sorted(set(self._per_tier) - set(self.context.tiers))
        if unknown:
            raise ValueError(f"layer {self.name}: tiers.{unknown[0]} names no tier "
                             f"(tiers: {', '.join(self.context.tiers)})")

    # -- computing ---------------------------------------------------------------------------
    def settings_for(self, session: Session) -> dict[str, str]:
        """The upstream settings of ``session`` for its current tier.

        Order of precedence (later wins): the backend's tier settings, ``settings``,
        ``tiers.<tier>``; then ``unset`` removes names.
        """
        base: dict[str, str] = {}
        backend = session.backend
        if (self.options.backend_settings and backend is not None
                and Capability.SESSION_SETTINGS in backend.capabilities):
            base = backend.session_settings(session)
        tier = session.tier.name if session.tier is not None else None
        per_tier = self._per_tier.get(tier, {})  # type: ignore[arg-type]
        if not (self._common or per_tier or self._unset):
            # Nothing to change: hand on the backend's (shared, read-only) dict, so front
            # doors that compare settings by identity skip re-applying them.
            return base
        out = dict(base)
        for key, value in self._common.items():
            out[key] = _fill(value, session)
        for key, value in per_tier.items():
            out[key] = _fill(value, session)
        for key in self._unset:
            out.pop(key, None)
        return out

    def _apply(self, session: Session) -> bool:
        try:
            session.settings = self.settings_for(session)
        except Exception as exc:
            # A session without its tier's limits would run unbounded: refuse instead.
            self.failures += 1
            log.exception("cannot compute session settings", extra={
                "layer": self.name, "tenant": session.tenant_slug})
            raise Reject(Reason.UNAVAILABLE, "cannot prepare the session for your tier",
                         detail=f"layer {self.name}: {type(exc).__name__}",
                         hint="Retry in a few seconds.", retry_after=1.0,
                         layer=self.name) from exc
        return True

    # -- phases ------------------------------------------------------------------------------
    async def on_connect(self, session: Session) -> None:
        self._apply(session)
        self.configured += 1
        self.context.metrics.decision(self.name, "configured", "tier",
                                      session.tier.name if session.tier else "unknown")

    def on_tier_change(self, session: Session) -> None:
        try:
            self._apply(session)
        except Reject as rej:
            # Keep the previous settings rather than none; close the client so that it
            # reconnects under the new tier instead of running with stale limits.
            session.close(rej)
            return
        self.reconfigured += 1
        self.context.metrics.decision(self.name, "reconfigured", "tier_change",
                                      session.tier.name if session.tier else "unknown")

    def describe(self) -> dict[str, Any]:
        return {"configured": self.configured, "reconfigured": self.reconfigured,
                "failures": self.failures, "settings": self._common,
                "tiers": self._per_tier, "unset": sorted(self._unset),
                "backend_settings": self.options.backend_settings}
