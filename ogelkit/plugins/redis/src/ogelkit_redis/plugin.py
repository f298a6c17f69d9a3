"""Entry point ``redis = "ogelkit_redis.plugin"``: registers the backend and its front door."""

from __future__ import annotations

from typing import Any

import ogelkit
from ogelkit_redis.backend import RedisBackend
from ogelkit_redis.listener import RedisFrontDoor


@ogelkit.hookimpl
def ogelkit_register_backends(register: Any) -> None:
    register.backend(RedisBackend)
    register.frontdoor(RedisFrontDoor)
