"""``namespace.encode_long`` (the encoder of long rewritten requests, such as a 10,000-key
MGET) gives exactly the bytes of ``wire.encode_command``, and a long keyed command through
the gateway still reaches Redis with every key prefixed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ogelkit_redis import wire
from ogelkit_redis.namespace import LONG_ARGV, Namespace, encode_long
from redis_support import gateway, new_tenants


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=300))
def test_encode_long_is_the_multibulk_encoding(argv):
    assert encode_long(argv) == wire.encode_command(argv)


def test_rewrite_of_a_long_command_prefixes_every_key_position():
    ns = Namespace(b"t:x:main:")
    argv = [b"MSET"] + [b"k%d" % (i // 2) if i % 2 == 0 else b"v" for i in range(2 * LONG_ARGV)]
    positions = list(range(1, len(argv), 2))
    out = ns.rewrite(list(argv), positions)
    expected = list(argv)
    for i in positions:
        expected[i] = b"t:x:main:" + expected[i]
    assert out == wire.encode_command(expected)


def test_a_10000_key_mget_through_the_gateway():
    with gateway(new_tenants(1)) as gw:
        c = gw.client(gw.a)
        c.mset({f"m{i}": f"v{i}" for i in range(10_000)})
        keys = [f"m{i}" for i in range(10_000)] + ["nokey"]
        assert c.mget(keys) == [f"v{i}".encode() for i in range(10_000)] + [None]
        assert c.delete(*keys) == 10_000
        c.close()
