"""ogelkit-convex: Convex deployments behind the gateway (WebSocket sync and HTTP API)."""

from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.listener import ConvexDoor
from ogelkit_convex.usage import function_usage

__all__ = ["ConvexBackend", "ConvexDoor", "function_usage"]
