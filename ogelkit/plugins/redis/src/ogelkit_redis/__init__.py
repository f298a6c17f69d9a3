"""ogelkit-redis: the Redis backend and RESP2/RESP3 front door of the O7s gateway.

Many tenants share one Redis server; each tenant database gets a key and channel prefix
(added on the way in, stripped on the way out, driven by the server's own command table)
and an ACL user limited to that prefix. See docs/plugins/redis.md.
"""

from ogelkit_redis.backend import RedisBackend
from ogelkit_redis.listener import RedisFrontDoor
from ogelkit_redis.options import RedisOptions

__all__ = ["RedisBackend", "RedisFrontDoor", "RedisOptions"]
