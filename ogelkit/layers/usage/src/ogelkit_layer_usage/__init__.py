"""ogelkit-layer-usage: O7s layer 6, usage metering with idempotent delivery.

Docs: docs/layers/usage.md.
"""

from ogelkit_layer_usage.layer import TIMEOUT_ERRORS, UsageLayer
from ogelkit_layer_usage.options import UsageOptions

__all__ = ["TIMEOUT_ERRORS", "UsageLayer", "UsageOptions"]
