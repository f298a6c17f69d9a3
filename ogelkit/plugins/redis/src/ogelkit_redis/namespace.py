"""Key and channel namespacing: the tenant's prefix goes on every key and channel on the
way in and comes off every key and channel name in replies on the way out."""

from __future__ import annotations

import re
from collections.abc import Callable

from ogelkit_redis import wire
from ogelkit_redis.wire import Frame

_GLOB = re.compile(rb"([*?\[\]\\])")
_KEYSPACE = re.compile(rb"^__keyspace@(\d+|\*)__:")
_KEYEVENT = re.compile(rb"^__keyevent@")


def glob_escape(prefix: bytes) -> bytes:
    """A prefix made safe inside a glob pattern (KEYS, SCAN MATCH, PSUBSCRIBE, ACL ~)."""
    return _GLOB.sub(rb"\\\1", prefix)


#: From this many arguments on, ``encode_long`` beats hiredis's ``pack_command`` (2x at
#: 10,000: an MGET of 10,000 keys took 1.3 ms to encode, the biggest cost of resp_big).
LONG_ARGV = 64


def encode_long(argv: list[bytes]) -> bytes:
    """``*N`` multibulk encoding of a long argument list, as ``wire.encode_command``: one
    ``$len`` header per distinct length, interleaved with the arguments in one join."""
    lens = list(map(len, argv))
    heads = {n: b"\r\n$%d\r\n" % n for n in set(lens)}
    parts: list[bytes] = [b""] * (2 * len(argv))
    parts[0::2] = map(heads.__getitem__, lens)
    parts[1::2] = argv
    return b"*%d" % len(argv) + b"".join(parts) + b"\r\n"


class ChannelRefused(Exception):
    """A channel the gateway will not let a tenant subscribe to."""


class Namespace:
    """One tenant database's prefix (``t:acme:main:``) and the rewrites built on it."""

    __slots__ = ("db", "escaped", "plen", "prefix")

    def __init__(self, prefix: bytes, db: int = 0):
        self.prefix = prefix
        self.plen = len(prefix)
        self.escaped = glob_escape(prefix)
        self.db = db  # upstream logical database, for keyspace notification channels

    # -- keys -------------------------------------------------------------------------------
    def rewrite(self, argv: list[bytes], positions: list[int]) -> bytes:
        """The request with the keys at ``positions`` prefixed, RESP-encoded."""
        prefix = self.prefix
        for i in positions:
            argv[i] = prefix + argv[i]
        if len(argv) > LONG_ARGV:
            return encode_long(argv)
        return wire.encode_command(argv)

    def strip(self, key: bytes | None) -> bytes | None:
        if key is not None and key.startswith(self.prefix):
            return key[self.plen:]
        return key

    def pattern(self, pattern: bytes) -> bytes:
        return self.escaped + pattern

    # -- channels ---------------------------------------------------------------------------
    def channel(self, name: bytes, *, pattern: bool = False) -> bytes:
        """Keyspace notification channels keep their ``__keyspace@db__:`` head and get the
        prefix on the key part; everything else gets the prefix in front."""
        m = _KEYSPACE.match(name)
        if m is not None:
            db = m.group(1)
            if db != b"*" and int(db) != 0:
                raise ChannelRefused("each tenant database has one logical database (0)")
            head = b"__keyspace@%s__:" % (b"*" if db == b"*" else str(self.db).encode())
            rest = name[m.end():]
            return head + (self.escaped if pattern else self.prefix) + rest
        if _KEYEVENT.match(name):
            raise ChannelRefused("__keyevent@ channels carry key names of every tenant; "
                                 "subscribe to __keyspace@0__:<key> channels instead")
        return (self.escaped if pattern else self.prefix) + name

    def strip_channel(self, name: bytes | None) -> bytes | None:
        if name is None:
            return None
        m = _KEYSPACE.match(name)
        if m is not None:
            rest = name[m.end():]
            db = m.group(1)
            head = b"__keyspace@*__:" if db == b"*" else b"__keyspace@0__:"
            if rest.startswith(self.prefix):
                return head + rest[self.plen:]
            if rest.startswith(self.escaped):
                return head + rest[len(self.escaped):]
            return name
        if name.startswith(self.prefix):
            return name[self.plen:]
        if name.startswith(self.escaped):
            return name[len(self.escaped):]
        return name

    # -- reply transforms (raw reply -> raw reply) ----------------------------------------------
    def strip_array(self, raw: bytes) -> bytes:
        """KEYS: every element is a key name."""
        if raw[0] not in b"*~":
            return raw
        frame, _ = wire.decode(raw)
        for item in frame.value or ():
            item.value = self.strip(item.value)
        return wire.encode(frame)

    def strip_scan(self, raw: bytes) -> bytes:
        if raw[0] != 42:
            return raw
        frame, _ = wire.decode(raw)
        keys = frame.value[1]
        for item in keys.value or ():
            item.value = self.strip(item.value)
        return wire.encode(frame)

    def strip_single(self, raw: bytes) -> bytes:
        """RANDOMKEY-style: a bulk string that is a key name."""
        if raw[0] != 36:
            return raw
        frame, _ = wire.decode(raw)
        frame.value = self.strip(frame.value)
        return wire.encode(frame)

    def strip_first(self, raw: bytes) -> bytes:
        """BLPOP/BZPOPMIN/LMPOP...: the first element of the reply is the key name."""
        if raw[0] not in b"*~>":
            return raw
        frame, _ = wire.decode(raw)
        if frame.value:
            frame.value[0].value = self.strip(frame.value[0].value)
        return wire.encode(frame)

    def strip_streams(self, raw: bytes) -> bytes:
        """XREAD/XREADGROUP: ``[[key, entries], ...]`` (RESP2) or ``{key: entries}`` (RESP3)."""
        kind = raw[0]
        if kind == 37:  # map
            frame, _ = wire.decode(raw)
            for item in frame.value[0::2]:
                item.value = self.strip(item.value)
            return wire.encode(frame)
        if kind != 42:
            return raw
        frame, _ = wire.decode(raw)
        for pair in frame.value or ():
            if pair.value:
                pair.value[0].value = self.strip(pair.value[0].value)
        return wire.encode(frame)

    def strip_channels(self, raw: bytes) -> bytes:
        """PUBSUB CHANNELS."""
        if raw[0] not in b"*~":
            return raw
        frame, _ = wire.decode(raw)
        for item in frame.value or ():
            item.value = self.strip_channel(item.value)
        return wire.encode(frame)

    def strip_numsub(self, raw: bytes) -> bytes:
        """PUBSUB NUMSUB: ``[ch, n, ch, n]`` or a map."""
        if raw[0] not in b"*%":
            return raw
        frame, _ = wire.decode(raw)
        for item in (frame.value or ())[0::2]:
            item.value = self.strip_channel(item.value)
        return wire.encode(frame)

    def strip_message(self, raw: bytes) -> bytes:
        """A pub/sub event: message, pmessage, smessage and (un)subscribe confirmations."""
        frame, _ = wire.decode(raw)
        items = frame.value
        if not items:
            return raw
        kind = items[0].value.lower() if items[0].value is not None else b""
        if kind == b"pmessage":
            items[1].value = self.strip_channel(items[1].value)
            items[2].value = self.strip_channel(items[2].value)
        elif len(items) > 1:
            items[1].value = self.strip_channel(items[1].value)
        return wire.encode(frame)

    def exec_transform(self, transforms: list[Callable[[bytes], bytes] | None]
                       ) -> Callable[[bytes], bytes] | None:
        """EXEC's reply holds one reply per queued command: transform each as its command
        would have been."""
        if not any(transforms):
            return None

        def transform(raw: bytes) -> bytes:
            if raw[0] not in b"*":
                return raw
            frame, _ = wire.decode(raw)
            items = frame.value
            if items is None:
                return raw
            for i, t in enumerate(transforms):
                if t is not None and i < len(items):
                    items[i], _ = wire.decode(t(wire.encode(items[i])))
            return wire.encode(frame)
        return transform


def first_word(raw: bytes) -> str:
    """``-WRONGTYPE ...`` -> ``WRONGTYPE`` (op.error)."""
    end = raw.find(b" ")
    if end < 0:
        end = raw.find(b"\r")
    return raw[1:end].decode("ascii", "replace")


__all__ = ["ChannelRefused", "Frame", "Namespace", "encode_long", "first_word", "glob_escape"]
