"""Entry point ``convex = "ogelkit_convex.plugin"``: the convex backend and its front door
(served on the gateway's HTTP port)."""

from __future__ import annotations

import ogelkit
from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.listener import ConvexDoor


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(ConvexBackend)
    register.frontdoor(ConvexDoor)


@ogelkit.hookimpl
def ogelkit_add_commands(cli) -> None:
    """``ogelkit convex token`` and ``ogelkit convex usage``."""
    from ogelkit_convex.cli import add_commands

    add_commands(cli)
