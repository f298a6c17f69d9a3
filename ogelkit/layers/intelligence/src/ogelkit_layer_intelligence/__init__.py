"""ogelkit-layer-intelligence: O7s layer 7, bans, retry-storm back-off, tier advice and
cost calibration.

Docs: docs/layers/intelligence.md.
"""

from ogelkit_layer_intelligence.layer import IntelligenceLayer
from ogelkit_layer_intelligence.options import IntelligenceOptions

__all__ = ["IntelligenceLayer", "IntelligenceOptions"]
