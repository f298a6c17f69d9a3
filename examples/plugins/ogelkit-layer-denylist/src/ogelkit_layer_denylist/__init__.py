"""Refuse chosen operations per tier: an example third-party ogelkit layer."""

from ogelkit_layer_denylist.layer import DenylistLayer, DenylistOptions

__all__ = ["DenylistLayer", "DenylistOptions"]
