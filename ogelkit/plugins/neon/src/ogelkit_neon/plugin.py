"""Entry point ``neon = "ogelkit_neon.plugin"``: registers the neon backend.

Its clients come in through the Postgres front door, which the postgres plugin registers.
"""

from __future__ import annotations

import ogelkit
from ogelkit_neon.backend import NeonBackend


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(NeonBackend)
