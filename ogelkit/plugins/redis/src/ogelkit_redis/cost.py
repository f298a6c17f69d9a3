"""Per-command cost classes for the cost layer.

Unit: **elements touched**. An O(1) command costs 1 and is never sent for estimation
(``cost_key`` returns None). Commands whose work grows with data get a cost key, and
``estimate_cost`` asks the upstream how big the data is:

=================  ========================================================  ================
class              commands                                                  estimate
=================  ========================================================  ================
keyspace           KEYS, DBSIZE, RANDOMKEY, FLUSHDB, INFO (gateway scans)    keys in the
                                                                             whole server
                                                                             (DBSIZE)
collection         SMEMBERS, HGETALL, HKEYS, HVALS, SINTER, SUNION, SDIFF    size of the
                   (+STORE), ZUNION/ZINTER/ZDIFF(+STORE), SORT, XRANGE and   collection(s)
                   XREVRANGE without COUNT                                   (SCARD, HLEN,
                                                                             ZCARD, XLEN...)
range              LRANGE, ZRANGE, ZREVRANGE, ZRANGEBYSCORE/LEX without      min(range,
                   LIMIT                                                     size)
sort               SORT, SORT_RO                                             n * log2(n)
=================  ========================================================  ================
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ogelkit import Operation

KEYSPACE = {"keys", "dbsize", "randomkey", "flushdb", "info"}
SIZE_OF = {
    "smembers": b"SCARD", "sinter": b"SCARD", "sunion": b"SCARD", "sdiff": b"SCARD",
    "sinterstore": b"SCARD", "sunionstore": b"SCARD", "sdiffstore": b"SCARD",
    "hgetall": b"HLEN", "hkeys": b"HLEN", "hvals": b"HLEN",
    "zunion": b"ZCARD", "zinter": b"ZCARD", "zdiff": b"ZCARD", "zunionstore": b"ZCARD",
    "zinterstore": b"ZCARD", "zdiffstore": b"ZCARD",
    "lrange": b"LLEN", "zrange": b"ZCARD", "zrevrange": b"ZCARD", "zrangebyscore": b"ZCARD",
    "zrevrangebyscore": b"ZCARD", "zrangebylex": b"ZCARD", "zrevrangebylex": b"ZCARD",
    "xrange": b"XLEN", "xrevrange": b"XLEN", "sort": b"SIZE", "sort_ro": b"SIZE",
}
#: Commands never admitted in a batch (the front door gives each its own operation): the
#: ones with a cost class, whose estimate is per command, and those that block.
UNBATCHED = frozenset(KEYSPACE | SIZE_OF.keys() | {
    "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax", "bzmpop",
    "xread", "xreadgroup", "wait", "waitaof"})
_STORE_DEST_FIRST = {"sinterstore", "sunionstore", "sdiffstore", "zunionstore",
                     "zinterstore", "zdiffstore"}


def _bounded(name: str, argv: list[bytes]) -> int | None:
    """The element count a ranged command asks for when its arguments bound it."""
    upper = [a.upper() for a in argv]
    if name in ("xrange", "xrevrange"):
        if b"COUNT" in upper:
            i = upper.index(b"COUNT")
            return int(argv[i + 1]) if i + 1 < len(argv) and argv[i + 1].isdigit() else None
        return None
    if b"LIMIT" in upper:
        i = upper.index(b"LIMIT")
        if i + 2 < len(argv):
            try:
                count = int(argv[i + 2])
            except ValueError:
                return None
            return count if count >= 0 else None
    if name in ("lrange", "zrange", "zrevrange") and len(argv) >= 4 and b"BYSCORE" not in upper \
            and b"BYLEX" not in upper:
        try:
            start, stop = int(argv[2]), int(argv[3])
        except ValueError:
            return None
        if start >= 0 and stop >= 0:
            return max(0, stop - start + 1)
    return None


def cost_key(op: Operation) -> tuple[Any, ...] | None:
    cmd = getattr(op, "command", None)
    argv: list[bytes] | None = getattr(op, "argv", None)
    if cmd is None or argv is None:
        return None
    name = cmd.full_name
    if name in KEYSPACE:
        return ("keyspace", name)
    if name not in SIZE_OF:
        return None
    bound = _bounded(name, argv)
    if bound is not None and bound <= 100:
        return None  # small, explicitly bounded: O(1)-like
    keys = tuple(argv[i] for i in cmd.key_positions(argv))
    return (name, keys, bound)


async def estimate_cost(backend: Any, op: Operation) -> float | None:
    key = cost_key(op)
    if key is None:
        return None
    if key[0] == "keyspace":
        frame = await backend.call(b"DBSIZE")
        return float(max(1, int(frame.value)))
    name, keys, bound = key
    if name in _STORE_DEST_FIRST:
        keys = keys[1:]
    size_cmd: bytes | None = SIZE_OF[name]
    total = 0
    if size_cmd == b"SIZE":  # SORT: list, set or sorted set
        frames = await backend.calls([[b"TYPE", keys[0]]]) if keys else []
        kind = frames[0].value if frames else b"none"
        size_cmd = {b"list": b"LLEN", b"set": b"SCARD", b"zset": b"ZCARD"}.get(kind)
        if size_cmd is None:
            return 1.0
        keys = keys[:1]
    frames = await backend.calls([[size_cmd, k] for k in keys])
    for f in frames:
        if not f.is_error and f.value is not None:
            total += int(f.value)
    if bound is not None:
        total = min(total, bound)
    if name in ("sort", "sort_ro") and total > 1:
        return float(total * math.log2(total))
    return float(max(1, total))
