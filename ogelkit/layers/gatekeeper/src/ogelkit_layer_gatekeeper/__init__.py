"""O7s layer 1, ``gatekeeper``: concurrent client connections per tenant. See docs/layers/gatekeeper.md."""

from ogelkit_layer_gatekeeper.layer import Gatekeeper
from ogelkit_layer_gatekeeper.options import GatekeeperOptions

__all__ = ["Gatekeeper", "GatekeeperOptions"]
