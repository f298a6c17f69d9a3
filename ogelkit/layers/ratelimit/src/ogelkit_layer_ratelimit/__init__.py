"""O7s layer 2, ``ratelimit``: operations per second with burst per tenant. See docs/layers/ratelimit.md."""

from ogelkit_layer_ratelimit.layer import Ratelimit
from ogelkit_layer_ratelimit.options import RatelimitOptions

__all__ = ["Ratelimit", "RatelimitOptions"]
