"""ogelkit-layer-session: O7s layer 4, per-tier upstream session settings.

Docs: docs/layers/session.md.
"""

from ogelkit_layer_session.layer import SessionLayer
from ogelkit_layer_session.options import SessionOptions

__all__ = ["SessionLayer", "SessionOptions"]
