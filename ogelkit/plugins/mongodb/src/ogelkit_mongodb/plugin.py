"""Entry point ``mongodb`` of ogelkit-mongodb: registers the backend and its front door."""

from __future__ import annotations

from typing import Any

import ogelkit
from ogelkit_mongodb.backend import MongoBackend
from ogelkit_mongodb.listener import MongoFrontDoor


@ogelkit.hookimpl
def ogelkit_register_backends(register: Any) -> None:
    register.backend(MongoBackend)
    register.frontdoor(MongoFrontDoor)
