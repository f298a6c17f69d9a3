"""Options of the session layer (``[[layers]] type = "session"``)."""

from __future__ import annotations

import re

import attrs

from ogelkit import option

#: A setting value as TOML spells it; stored as text because upstreams take text.
Value = str | int | float | bool

# Postgres GUC names, including custom ones such as "app.org_id"; front doors quote
# values, but names go into SET statements, so only plain identifiers are accepted.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def _check_names(names) -> None:
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"invalid setting name(s) {', '.join(repr(b) for b in bad)}: use "
                         "letters, digits and '_', optionally one '.' (custom settings)")


def _settings_ok(_inst: object, _attr: attrs.Attribute, value: dict[str, Value]) -> None:
    _check_names(value)


def _tiers_ok(_inst: object, _attr: attrs.Attribute, value: dict[str, dict[str, Value]]) -> None:
    for table in value.values():
        _check_names(table)


def _unset_ok(_inst: object, _attr: attrs.Attribute, value: list[str]) -> None:
    _check_names(value)


@attrs.define(kw_only=True)
class SessionOptions:
    backend_settings: bool = option(
        True,
        doc="Start from the settings the backend computes for the session's tier "
            "(backend.session_settings: work_mem, statement_timeout, "
            "idle_in_transaction_session_timeout, max_parallel_workers_per_gather and "
            "application_name for Postgres, maxTimeMS for MongoDB, none for Redis); false "
            "uses only the settings below.")
    settings: dict[str, Value] = option(
        factory=dict, validator=_settings_ok,
        doc="Settings added for every tier, overriding the backend's. Values may use the "
            "placeholders {tier}, {tenant} and {database}.")
    tiers: dict[str, dict[str, Value]] = option(
        factory=dict, validator=_tiers_ok,
        doc="Per-tier settings ([layers.tiers.<tier>] tables), overriding both the backend's "
            "and `settings`; same placeholders. Tier names must exist in the tier table.")
    unset: list[str] = option(
        factory=list, validator=_unset_ok,
        doc="Setting names never sent upstream, even when the backend computes them (e.g. "
            "a setting a managed upstream refuses).")
