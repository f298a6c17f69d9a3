"""Studio's key browser: a few read commands (and SET/DEL) on one tenant database's keys.

The core's console session admitted the command through the layers already. It runs on the
backend's admin connection, so every key is prefixed with the database's namespace here
and stripped from the answer (``SCAN`` matches only inside the namespace): a tenant sees
and touches its own keys only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ogelkit_redis import wire

if TYPE_CHECKING:
    from ogelkit_redis.backend import RedisBackend, TenantDb

#: command -> how many arguments after it are keys (the first n), and argument count bounds
COMMANDS: dict[str, tuple[int, int, int]] = {
    "SCAN": (0, 1, 5), "TYPE": (1, 1, 1), "TTL": (1, 1, 1), "EXISTS": (1, 1, 1),
    "GET": (1, 1, 1), "STRLEN": (1, 1, 1), "HGETALL": (1, 1, 1), "LRANGE": (1, 3, 3),
    "SMEMBERS": (1, 1, 1), "ZRANGE": (1, 3, 4), "SET": (1, 2, 2), "DEL": (1, 1, 1),
    "DUMPVALUE": (1, 1, 1),  # the browser's own: TYPE, then the read for that type
}
_READ_BY_TYPE = {b"string": [b"GET"], b"hash": [b"HGETALL"], b"list": [b"LRANGE", b"0", b"99"],
                 b"set": [b"SMEMBERS"], b"zset": [b"ZRANGE", b"0", b"99", b"WITHSCORES"]}


def parse(command: Any) -> list[str]:
    if not isinstance(command, list) or not command or \
            not all(isinstance(a, str) for a in command):
        raise ValueError('a Redis console request is {"command": ["GET", "key"]}')
    name = command[0].upper()
    spec = COMMANDS.get(name)
    if spec is None:
        raise ValueError(f"the key browser runs {', '.join(sorted(COMMANDS))}; not {name}")
    _keys, low, high = spec
    if not low <= len(command) - 1 <= high:
        raise ValueError(f"{name} takes {low}-{high} arguments here")
    return [name, *command[1:]]


def _json(frame: wire.Frame, tdb: TenantDb, strip: bool = False) -> Any:
    value = frame.value
    if frame.is_error:
        raise ValueError(value.decode("utf-8", "replace"))
    if isinstance(value, list):
        return [_json(f, tdb, strip) for f in value]
    if isinstance(value, bytes):
        if strip:
            value = tdb.ns.strip(value) or b""
        return value.decode("utf-8", "replace")
    return value


async def run(backend: RedisBackend, tdb: TenantDb, argv: list[str]) -> dict[str, Any]:
    name, args = argv[0], [a.encode() for a in argv[1:]]
    ns = tdb.ns
    if name == "SCAN":
        cursor = args[0] if args else b"0"
        pattern, count = b"*", b"100"
        rest = args[1:]
        while rest:
            opt = rest[0].upper()
            if opt in (b"MATCH", b"COUNT") and len(rest) >= 2:
                pattern, count = (rest[1], count) if opt == b"MATCH" else (pattern, rest[1])
                rest = rest[2:]
            else:
                raise ValueError("SCAN cursor [MATCH pattern] [COUNT n]")
        frame = await _call(backend, b"SCAN", cursor, b"MATCH", ns.pattern(pattern),
                            b"COUNT", count)
        return {"result": [_json(frame.value[0], tdb), _json(frame.value[1], tdb, strip=True)],
                "command": "SCAN"}
    key = ns.prefix + args[0]
    if name == "DUMPVALUE":
        kind = (await _call(backend, b"TYPE", key)).value
        read = _READ_BY_TYPE.get(kind)
        value = None if read is None else _json(await _call(backend, read[0], key, *read[1:]),
                                                tdb)
        return {"result": {"type": kind.decode(), "value": value}, "command": "DUMPVALUE"}
    frame = await _call(backend, name.encode(), key, *args[1:])
    return {"result": _json(frame, tdb), "command": name}


async def _call(backend: RedisBackend, *argv: bytes) -> wire.Frame:
    from ogelkit_redis.backend import RedisCallError
    try:
        return await backend.call(*argv)
    except RedisCallError as exc:
        raise ValueError(str(exc)) from None
