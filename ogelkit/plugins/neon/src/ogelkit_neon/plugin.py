"""Entry point ``neon = "ogelkit_neon.plugin"``: registers the neon backend (work in progress)."""

from __future__ import annotations
