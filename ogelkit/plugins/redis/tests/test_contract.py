"""The core's FrontDoorContract for the Redis door, with redis-py as the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import redis
from ogelkit_redis import errors

from ogelkit import Reject
from ogelkit.testing import services
from ogelkit.testing.frontdoor import FrontDoorContract


class TestRedisDoorContract(FrontDoorContract):
    backend: ClassVar[str] = f'type = "redis"\nurl = "{services.redis_url()}"'
    protocol: ClassVar[str] = "redis"
    shutdown_marker: ClassVar[str] = "shutting down"

    @staticmethod
    def encode_reject(reject: Reject) -> bytes:
        return errors.reject_error(reject)

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        client = redis.Redis(host="127.0.0.1", port=port, username=f"{user}.{database}",
                             password=password, socket_timeout=5)
        try:
            client.get("contract-key")
        except redis.RedisError as exc:
            return str(exc)
        finally:
            client.close()
        return "ok"

    def hold_idle(self, port: int, user: str, password: str,
                  database: str) -> Callable[[], str]:
        conn = redis.Connection(host="127.0.0.1", port=port, username=f"{user}.{database}",
                                password=password, socket_timeout=10)
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")

        def told() -> str:
            # No request is outstanding: whatever arrives is what the drain told us.
            try:
                return f"unexpected reply {conn.read_response()!r}"
            except redis.RedisError as exc:
                return str(exc)
            finally:
                conn.disconnect()

        return told
