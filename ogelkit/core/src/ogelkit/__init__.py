"""ogelkit: a multi-tenant, multi-database gateway (O7s) built from plugins.

The public API for plugin authors::

    import ogelkit

    @ogelkit.hookimpl
    def ogelkit_register_layers(register):
        register.layer(MyLayer)
"""

from typing import TYPE_CHECKING, Any

import pluggy

from ogelkit.backend import Backend, Capability
from ogelkit.config import validators
from ogelkit.config.schema import Duration, Size, default_options, option, options_table
from ogelkit.control.records import (
    USAGE_FIELDS,
    DatabaseRecord,
    LayerReport,
    TenantRecord,
    UsageEvent,
    UsageTotals,
)
from ogelkit.frontdoor import FrontDoor
from ogelkit.layer import Layer, NoOptions
from ogelkit.model import Operation, Reason, Reject, Session
from ogelkit.tiers import Tier, TierTable
from ogelkit.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from ogelkit.config.errors import ConfigError, ErrorCollector
    from ogelkit.context import GatewayContext
    from ogelkit.control.store import NotFound
    from ogelkit.directory import TenantEntry
    from ogelkit.metrics import Decisions
    from ogelkit.plugins import Plugins
    from ogelkit.state import OutagePolicy

hookimpl = pluggy.HookimplMarker("ogelkit")

# Public names whose modules pull in heavier dependencies (prometheus_client, redis ...):
# imported on first use, so `import ogelkit` stays cheap for the CLI.
_LAZY = {
    "ConfigError": "ogelkit.config.errors",
    "ErrorCollector": "ogelkit.config.errors",
    "Decisions": "ogelkit.metrics",
    "GatewayContext": "ogelkit.context",
    "NotFound": "ogelkit.control.store",
    "OutagePolicy": "ogelkit.state",
    "Plugins": "ogelkit.plugins",
    "TenantEntry": "ogelkit.directory",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ogelkit-core")
    except PackageNotFoundError:  # running from a source tree without metadata
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the distribution's metadata on first use
        value = globals()["__version__"] = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ogelkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "USAGE_FIELDS",
    "Backend",
    "Capability",
    "ConfigError",
    "DatabaseRecord",
    "Decisions",
    "Duration",
    "ErrorCollector",
    "FrontDoor",
    "GatewayContext",
    "Layer",
    "LayerReport",
    "NoOptions",
    "NotFound",
    "Operation",
    "OutagePolicy",
    "Plugins",
    "Reason",
    "Reject",
    "Session",
    "Size",
    "TenantEntry",
    "TenantRecord",
    "Tier",
    "TierTable",
    "UsageEvent",
    "UsageTotals",
    "__version__",
    "default_options",
    "format_duration",
    "format_size",
    "hookimpl",
    "option",
    "options_table",
    "parse_duration",
    "parse_size",
    "validators",
]
