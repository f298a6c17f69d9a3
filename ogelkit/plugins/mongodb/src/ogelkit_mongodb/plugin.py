"""Entry point ``mongodb`` of ogelkit-mongodb: registers the backend (and its front door)."""

from __future__ import annotations

import ogelkit
from ogelkit_mongodb.backend import MongoBackend


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(MongoBackend)
