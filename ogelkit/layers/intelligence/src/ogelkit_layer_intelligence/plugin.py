"""Entry point ``intelligence`` of ogelkit-layer-intelligence: the layer and its commands."""

from __future__ import annotations

import ogelkit
from ogelkit_layer_intelligence.layer import IntelligenceLayer


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(IntelligenceLayer)


@ogelkit.hookimpl
def ogelkit_add_commands(cli) -> None:
    """``ogelkit tenants advise TENANT`` and ``ogelkit intelligence calibration``."""
    from ogelkit_layer_intelligence.cli import add_commands

    add_commands(cli)
