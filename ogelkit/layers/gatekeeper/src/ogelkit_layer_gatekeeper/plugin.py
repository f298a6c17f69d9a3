"""Entry point ``gatekeeper`` (group ``ogelkit``): registers the layer."""

import ogelkit
from ogelkit_layer_gatekeeper.layer import Gatekeeper


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(Gatekeeper)
