"""Entry point ``usage`` of ogelkit-layer-usage: registers the layer."""

from __future__ import annotations

import ogelkit
from ogelkit_layer_usage.layer import UsageLayer


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(UsageLayer)
