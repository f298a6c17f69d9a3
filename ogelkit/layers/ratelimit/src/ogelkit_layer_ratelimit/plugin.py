"""Entry point ``ratelimit`` (group ``ogelkit``): registers the layer."""

import ogelkit
from ogelkit_layer_ratelimit.layer import Ratelimit


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(Ratelimit)
