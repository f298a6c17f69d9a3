"""Entry point module: ``[project.entry-points.ogelkit] denylist = "ogelkit_layer_denylist.plugin"``."""

import ogelkit
from ogelkit_layer_denylist.layer import DenylistLayer


@ogelkit.hookimpl
def ogelkit_register_layers(register):
    register.layer(DenylistLayer)
