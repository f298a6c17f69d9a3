"""O7s layer 5, ``timeout``: a gateway-side deadline per operation. See docs/layers/timeout.md."""

from ogelkit_layer_timeout.layer import Timeout
from ogelkit_layer_timeout.options import TimeoutOptions

__all__ = ["Timeout", "TimeoutOptions"]
