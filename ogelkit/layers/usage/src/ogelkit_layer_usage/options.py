"""Options of the usage layer (``[[layers]] type = "usage"``)."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, Size, option, validators


def _factors_ok(_inst: object, attribute: attrs.Attribute, value: dict[str, float]) -> None:
    bad = [k for k, v in value.items() if v < 0]
    if bad:
        raise ValueError(f"{attribute.name}.{bad[0]} cannot be negative")


@attrs.define(kw_only=True)
class UsageOptions:
    flush_interval: Duration = option(
        5.0, validator=validators.positive,
        doc="Length of a metering window: every flush_interval the amounts aggregated per "
            "(tenant, database, kind) are cut into usage events and written to the control "
            "plane. A SIGKILL loses at most the window in progress (plus whatever the "
            "control plane had not accepted yet).")
    batch_size: int = option(
        500, validator=validators.positive,
        doc="Most events per control plane write. When this many (tenant, database, kind) "
            "keys are open in a window, the window is cut early.")
    max_pending: int = option(
        100_000, validator=validators.positive,
        doc="Most cut events kept in memory while the control plane refuses writes. Beyond "
            "it the oldest are dropped: their amounts are logged at error level and counted "
            "in ogelkit_usage_events_dropped_total, never lost silently.")
    retry_backoff: Duration = option(
        0.5, validator=validators.positive,
        doc="First wait before retrying a failed write (same batch, same event ids); doubles "
            "on each failure up to max_backoff.")
    max_backoff: Duration = option(
        30.0, validator=validators.positive, doc="Longest wait between retries of a failed write.")
    close_timeout: Duration = option(
        8.0, validator=validators.positive,
        doc="At shutdown (after the drain) how long to keep writing the last events before "
            "giving up on the rest (logged and counted as dropped). Keep it under the "
            "runtime's 10 s close deadline.")
    storage_interval: Duration = option(
        600.0, validator=validators.not_negative,
        doc="How often to snapshot the storage of tenant databases (backend.storage_bytes); "
            "the first snapshot is taken at startup. 0 turns snapshots off.")
    storage_scope: Literal["all", "active"] = option(
        "all",
        doc='Which databases each snapshot covers: "all" databases of the control plane on a '
            'backend of this gateway (storage is billed while a database sleeps), or '
            '"active" ones only (databases with a live session on this replica).')
    cpu_factor: dict[str, float] = option(
        factory=dict, validator=_factors_ok,
        doc="Share of an operation's duration counted as vCPU time, by backend id or kind "
            "(id wins), default 1.0: vcpu_seconds = duration x factor. See the formula in "
            "the docs.")
    memory_per_connection: Size | Literal["work_mem"] = option(
        "work_mem",
        doc='Memory counted per open connection for GB-seconds: "work_mem" uses the '
            "session's tier work_mem (the memory each operation may use), a size fixes it "
            "for every tier: gb_seconds = connection_seconds x memory / 1 GiB.")
