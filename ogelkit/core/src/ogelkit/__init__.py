"""ogelkit: a multi-tenant, multi-database gateway (O7s) built from plugins.

The public API for plugin authors::

    import ogelkit

    @ogelkit.hookimpl
    def ogelkit_register_layers(register):
        register.layer(MyLayer)
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from ogelkit.backend import Backend, Capability
from ogelkit.config import validators
from ogelkit.config.schema import Duration, Size, option
from ogelkit.frontdoor import FrontDoor
from ogelkit.layer import Layer, NoOptions
from ogelkit.model import Operation, Reason, Reject, Session
from ogelkit.tiers import Tier

hookimpl = pluggy.HookimplMarker("ogelkit")

try:
    __version__ = version("ogelkit-core")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "Backend",
    "Capability",
    "Duration",
    "FrontDoor",
    "Layer",
    "NoOptions",
    "Operation",
    "Reason",
    "Reject",
    "Session",
    "Size",
    "Tier",
    "__version__",
    "hookimpl",
    "option",
    "validators",
]
