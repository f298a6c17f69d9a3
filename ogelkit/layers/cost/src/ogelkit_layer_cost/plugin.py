"""Entry point ``cost`` (group ``ogelkit``): registers the layer."""

import ogelkit
from ogelkit_layer_cost.layer import Cost


@ogelkit.hookimpl
def ogelkit_register_layers(register) -> None:
    register.layer(Cost)
