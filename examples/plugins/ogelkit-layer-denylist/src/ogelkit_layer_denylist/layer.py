"""The denylist layer: a set lookup per operation, decided from the operation's name.

The name is the protocol's own short verb (``DROP``, ``TRUNCATE`` for SQL, ``FLUSHDB`` for
Redis, ``drop`` for MongoDB), so one layer works on every front door without parsing.
"""

from __future__ import annotations

from collections import Counter

import attrs

import ogelkit
from ogelkit import Operation, Reason, Reject, Session

ANY_TIER = "*"


@attrs.define(kw_only=True)
class DenylistOptions:
    deny: dict[str, list[str]] = ogelkit.option(
        factory=dict,
        doc='Operation names to refuse, by tier name; "*" applies to every tier. Names are '
            "compared case-insensitively.")
    message: str = ogelkit.option(
        "{name} is not allowed on the {tier} tier",
        doc="Error message; {name} and {tier} are filled in.")


class DenylistLayer(ogelkit.Layer[DenylistOptions]):
    type_name = "denylist"
    Config = DenylistOptions

    def __init__(self, config: DenylistOptions, *, name: str, context):
        super().__init__(config, name=name, context=context)
        everyone = {n.upper() for n in config.deny.get(ANY_TIER, [])}
        # Precomputed per tier so the per-operation work is one dict and one set lookup.
        self._denied: dict[str, frozenset[str]] = {
            tier: frozenset(everyone | {n.upper() for n in names})
            for tier, names in config.deny.items() if tier != ANY_TIER
        }
        self._default = frozenset(everyone)
        self.refused: Counter[str] = Counter()

    def _for(self, session: Session) -> frozenset[str]:
        tier = session.tier.name if session.tier is not None else ""
        return self._denied.get(tier, self._default)

    def on_operation(self, op: Operation) -> None:
        name = op.name.upper()
        if name in self._for(op.session):
            tier = op.session.tier.name if op.session.tier else "?"
            self.refused[name] += 1
            raise Reject(Reason.FORBIDDEN, self.config.message.format(name=name, tier=tier),
                         detail=f"layer {self.name} refuses {name} for tier {tier}",
                         hint="Ask the platform operator, or use a tier that allows it.")
        return None

    def describe(self) -> dict[str, object]:
        return {"refused": dict(self.refused)}
