"""Entry point ``timeout`` (group ``ogelkit``): registers the layer."""

import ogelkit
from ogelkit_layer_timeout.layer import Timeout


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(Timeout)
