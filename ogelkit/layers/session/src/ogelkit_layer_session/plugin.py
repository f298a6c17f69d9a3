"""Entry point ``session`` of ogelkit-layer-session: registers the layer."""

from __future__ import annotations

import ogelkit
from ogelkit_layer_session.layer import SessionLayer


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(SessionLayer)
