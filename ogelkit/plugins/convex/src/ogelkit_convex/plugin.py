"""Entry point ``convex = "ogelkit_convex.plugin"``: registers the convex backend (work in progress)."""

from __future__ import annotations
