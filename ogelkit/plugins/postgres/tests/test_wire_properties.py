"""Property tests (hypothesis) of the Postgres door's parsers: each is total (a result or
its one documented error, never another exception) and round-trips what the builders make.
The relay's own framing is held to the same rules: any chunking of any byte stream either
relays it or ends in a protocol error for that client, never an exception."""

from __future__ import annotations

import collections
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ogelkit_postgres import wire as pg
from ogelkit_postgres.connection import PostgresConnection
from ogelkit_postgres.login import parse_options, parse_sasl_initial
from ogelkit_postgres.testing import relay_connection as _relay_conn

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

names = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                 max_size=30)


# -- startup packet --------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=200))
def test_parse_startup_is_total(body):
    try:
        version, params = pg.parse_startup(body)
    except ValueError:
        return
    assert isinstance(version, int) and isinstance(params, dict)


@FAST
@given(st.dictionaries(names, values, max_size=8))
def test_startup_message_round_trips(params):
    packet = pg.startup_message(params)
    assert pg.unpack_len(packet, 0)[0] == len(packet)
    version, parsed = pg.parse_startup(packet[4:])
    assert version == pg.PROTOCOL_3 and parsed == params


# -- options ---------------------------------------------------------------------------------

@FAST
@given(st.text(max_size=120))
def test_parse_options_is_total(text):
    try:
        tenant, settings_ = parse_options(text)
    except ValueError:
        return
    assert tenant is None or isinstance(tenant, str)
    assert all(isinstance(k, str) and k for k in settings_)


@FAST
@given(st.dictionaries(names, st.text(alphabet=string.ascii_letters + string.digits + " .,-",
                                      max_size=20), max_size=6),
       st.sampled_from(["-c {}={}", "--{}={}", "{}={}"]))
def test_options_round_trip_with_escaped_spaces(settings_, form):
    settings_ = {k: v for k, v in settings_.items() if k not in ("tenant", "reference",
                                                                 "endpoint")}
    text = " ".join(form.format(k, v.replace("\\", "\\\\").replace(" ", "\\ "))
                    for k, v in settings_.items())
    _, parsed = parse_options(text)
    assert parsed == settings_


# -- SASLInitialResponse ---------------------------------------------------------------------

@FAST
@given(st.binary(max_size=100))
def test_parse_sasl_initial_is_total(body):
    out = parse_sasl_initial(body)
    assert out is None or (isinstance(out[0], str) and isinstance(out[1], bytes))


@FAST
@given(st.binary(max_size=80))
def test_sasl_initial_round_trips(data):
    msg = pg.sasl_initial_response("SCRAM-SHA-256", data)
    assert parse_sasl_initial(msg[5:]) == ("SCRAM-SHA-256", data)


# -- Parse / Bind / Execute ------------------------------------------------------------------

@FAST
@given(st.binary(max_size=60))
def test_extended_splitters_are_total(body):
    for split in (pg.split_parse, pg.split_bind, pg.split_execute):
        split(body)  # None or a tuple, never an exception


@FAST
@given(st.binary(max_size=20).filter(lambda b: 0 not in b),
       st.binary(max_size=60).filter(lambda b: 0 not in b),
       st.lists(st.integers(0, 2**32 - 1), max_size=5),
       st.integers(-2**31, 2**31 - 1))
def test_extended_messages_round_trip(name, query, oids, rows):
    parse = name + b"\0" + query + b"\0" + pg._h.pack(len(oids)) + b"".join(
        pg._I.pack(o) for o in oids)
    assert pg.split_parse(parse) == (name, query, tuple(oids))
    assert pg.split_parse(parse[:-1]) is None
    bind = name + b"\0" + name + b"\0" + pg._h.pack(0) + pg._h.pack(0) + pg._h.pack(0)
    assert pg.split_bind(bind) == (name, name)
    execute = name + b"\0" + pg._i.pack(rows)
    assert pg.split_execute(execute) == (name, rows)
    assert pg.split_execute(execute[:-1]) is None


# -- the relay's framing ---------------------------------------------------------------------

frontend_types = st.sampled_from(list(b"QPBDESHCdcf"))


@st.composite
def frames(draw):
    """A stream of well-formed or damaged frontend messages, and a chunking of it."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(frontend_types)
        body = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            body = body.replace(b"\0", b"") + b"\0"
        out += bytes([kind]) + pg.pack_i32(len(body) + 4) + body
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=6)))
    return out, cuts


def _feed(conn, stream, cuts):
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            conn.data_received(stream[start:cut])
            start = cut


class _Probe(PostgresConnection):
    """Records what would end the connection instead of ending it."""

    __slots__ = ("crashes", "protocol_errors")

    def crashed(self, exc):
        self.crashes.append(exc)

    def fatal(self, sqlstate, message, **kw):
        self.protocol_errors.append(sqlstate)
        self.phase = 3  # DRAINING: the relay reads no further

    def _drop_server(self):
        pass


def _probe(session_mode: bool):
    conn, _, server = _relay_conn(session_mode, cls=_Probe)
    conn.crashes, conn.protocol_errors = [], []
    return conn, server


@FAST
@given(frames())
def test_relay_framing_is_total_and_forwards_everything_in_session_mode(data):
    stream, cuts = data
    conn, server = _probe(True)
    _feed(conn, stream, cuts)
    assert not conn.crashes and not conn.protocol_errors
    assert b"".join(server.chunks) == stream  # session mode, no layers: pass-through


@FAST
@given(frames())
def test_relay_framing_in_transaction_mode_never_raises(data):
    stream, cuts = data
    conn, _ = _probe(False)
    conn.parse_fifo = collections.deque()
    conn.cfg = type("Cfg", (), {"max_prepared_statements": 100})()
    srv = conn.server
    srv.prepared = collections.OrderedDict()
    srv.by_key = {}
    _feed(conn, stream, cuts)
    assert not conn.crashes
    assert set(conn.protocol_errors) <= {"08P01"}


def test_the_relay_class_has_no_raising_index_calls():
    """``data.index`` raised ValueError on a missing NUL (defect 6): the relay uses find."""
    import inspect
    assert ".index(" not in inspect.getsource(PostgresConnection)
