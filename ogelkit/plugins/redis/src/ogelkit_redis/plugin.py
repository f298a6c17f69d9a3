"""Entry point ``redis = "ogelkit_redis.plugin"``: registers the redis backend."""

from __future__ import annotations

import ogelkit
from ogelkit_redis.backend import RedisBackend


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(RedisBackend)
