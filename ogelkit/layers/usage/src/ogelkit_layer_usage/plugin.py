"""Entry point ``usage`` of ogelkit-layer-usage: registers the layer and declares the
``ogelkit_usage_flushed`` hook it fires."""

from __future__ import annotations

from typing import Any

import ogelkit
from ogelkit_layer_usage import hookspecs
from ogelkit_layer_usage.layer import UsageLayer


@ogelkit.hookimpl
def ogelkit_add_hookspecs(pluginmanager: Any) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(UsageLayer)
