"""Options of the intelligence layer (``[[layers]] type = "intelligence"``)."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, option, validators


def _targets_ok(_inst: object, attribute: attrs.Attribute, value: dict[str, float]) -> None:
    bad = [k for k, v in value.items() if v <= 0]
    if bad:
        raise ValueError(f"{attribute.name}.{bad[0]} must be greater than 0")


def _default_targets() -> dict[str, float]:
    # p99 latency targets of the seed documents (O7S calibration): enterprise has none.
    return {"free": 1.0, "starter": 5.0, "pro": 30.0}


@attrs.define(kw_only=True)
class IntelligenceOptions:
    # -- auth-failure bans -------------------------------------------------------------------
    auth_failures: int = option(
        10, validator=validators.at_least_one,
        doc="Failed logins for one tenant from one client address within auth_window that "
            "ban that tenant and address.")
    auth_window: Duration = option(
        150.0, validator=validators.positive, doc="Sliding window in which auth_failures are counted.")
    ban: Duration = option(
        120.0, validator=validators.positive,
        doc='First ban of a (tenant, address): logins are refused with reason "banned" '
            "before the password is even checked.")
    ban_factor: float = option(
        2.0, validator=validators.at_least_one,
        doc="Each further ban of the same (tenant, address) within ban_memory lasts "
            "ban_factor times longer than the one before.")
    max_ban: Duration = option(3600.0, validator=validators.positive, doc="Longest ban.")
    ban_memory: Duration = option(
        86400.0, validator=validators.positive,
        doc="How long a (tenant, address) keeps its escalation level after its last ban "
            "ended; after that the next ban is a first one again.")
    # -- retry storms ------------------------------------------------------------------------
    storm_threshold: float = option(
        50.0, validator=validators.positive,
        doc="Refusals per second of one tenant (by any other layer or the core, averaged "
            "over storm_window) that make a retry storm.")
    storm_window: Duration = option(
        10.0, validator=validators.at_least_one,
        doc="Window over which storm_threshold is averaged (whole seconds).")
    backoff: Duration = option(
        1.0, validator=validators.positive,
        doc='First back-off of a storming tenant: its new connections and operations are '
            'refused with reason "banned" and a retry-after.')
    backoff_factor: float = option(
        2.0, validator=validators.at_least_one,
        doc="Each further storm of the tenant within backoff_memory backs off backoff_factor "
            "times longer.")
    max_backoff: Duration = option(60.0, validator=validators.positive, doc="Longest back-off.")
    backoff_memory: Duration = option(
        600.0, validator=validators.positive,
        doc="How long a tenant keeps its back-off level after its last back-off ended.")
    # -- calibration -------------------------------------------------------------------------
    latency_targets: dict[str, Duration] = option(
        factory=_default_targets, validator=_targets_ok,
        doc="p99 latency target per tier for cost calibration (tiers not listed get no "
            "suggested ceiling).")
    calibration_samples: int = option(
        1000, validator=validators.at_least_one,
        doc="(cost, duration) pairs kept per backend, most recent first, for calibration.")
    calibration_min_samples: int = option(
        50, validator=validators.at_least_one,
        doc="Pairs a backend needs before a cost ceiling is suggested for it.")
    report_interval: Duration = option(
        60.0, validator=validators.not_negative,
        doc="How often the calibration report is written to the control plane (read by "
            "`ogelkit intelligence calibration` and `ogelkit tenants advise`); 0 = never.")
    # -- advice ------------------------------------------------------------------------------
    advise_min_refusals: int = option(
        10, validator=validators.at_least_one,
        doc="Refusals of one kind (connection cap, rate, cost, timeouts) over the advice "
            "period that make `ogelkit tenants advise` recommend a tier allowing more.")
    advise_storage_ratio: float = option(
        0.8, validator=validators.ratio,
        doc="Share of the tier's storage quota in use from which a bigger tier is advised.")
    # -- shared state ------------------------------------------------------------------------
    shared: bool = option(
        True,
        doc="With a [state] Redis: count auth failures and keep bans and back-offs in Redis "
            "so every replica enforces them. Without [state] (or false) everything stays "
            "in this process.")
    sync_interval: Duration = option(
        1.0, validator=validators.positive,
        doc="How often a replica reads the shared ban list (a ban decided elsewhere applies "
            "here within this time; a ban decided here applies at once).")
    state_down: Literal["open", "closed"] = option(
        "open",
        doc='When Redis is down: "open" keeps serving with the bans known so far and counts '
            'failures in this process; "closed" refuses every new login with reason '
            '"unavailable" until Redis is back. Open by default: an outage of the ban list '
            "must not lock every tenant out.")
    key_prefix: str = option(
        "o7s:",
        doc="Prefix of every Redis key of this layer (<key_prefix>intel:...).")
