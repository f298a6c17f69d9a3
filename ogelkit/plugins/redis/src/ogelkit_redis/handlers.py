"""Command handlers by kind (``Command.kind``), for everything that is not a plain
key-taking command: connection state kept in the gateway, transactions, pub/sub, key
patterns, emulated commands and refusals. Each returns like ``RedisConnection._execute``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ogelkit import Reason, Reject
from ogelkit_redis import wire
from ogelkit_redis.clients import registry_of
from ogelkit_redis.errors import NO_SWITCH
from ogelkit_redis.login import names_another_database
from ogelkit_redis.namespace import ChannelRefused

if TYPE_CHECKING:
    from ogelkit_redis.commands import Command
    from ogelkit_redis.connection import RedisConnection
    from ogelkit_redis.upstream import Upstream

Handler = Callable[["RedisConnection", "Command", list[bytes], bytes], bool]

_IN_MULTI = "is not supported inside MULTI through the gateway"


def _arity_error(c: RedisConnection, cmd: Command) -> bool:
    c.reply(wire.error(f"ERR wrong number of arguments for '{cmd.full_name.replace('|', ' ')}' "
                       "command"))
    if c.in_multi:
        c.multi_error = True
    return True


def _arity_ok(cmd: Command, argv: list[bytes]) -> bool:
    a = cmd.arity
    return len(argv) == a if a >= 0 else len(argv) >= -a


def _not_in_multi(c: RedisConnection, cmd: Command) -> bool:
    c.multi_error = True
    c.reply(wire.error(f"ERR {cmd.full_name.replace('|', ' ').upper()} {_IN_MULTI}"))
    return True


def _strip_for(c: RedisConnection, name: str) -> Callable[[bytes], bytes] | None:
    ns = c.ns
    if name in ("xread", "xreadgroup"):
        return ns.strip_streams
    if name in ("blpop", "brpop", "bzpopmin", "bzpopmax", "blmpop", "bzmpop", "lmpop", "zmpop"):
        return ns.strip_first
    return None


def _quota(c: RedisConnection, cmd: Command, argv: list[bytes]) -> bool:
    """True when the write must be refused (tenant over its key or memory quota)."""
    if cmd.denyoom and c.tdb.over_quota is not None:
        c._refuse(cmd, argv, c.tdb.over_quota)
        return True
    return False


# -- plain key commands ---------------------------------------------------------------------
def keyed(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    """Key commands whose replies name keys (LMPOP, ZMPOP ...)."""
    if _quota(c, cmd, argv):
        return True
    positions = cmd.key_positions(argv)
    out = c.ns.rewrite(argv, positions) if positions else raw
    return c._send(cmd, argv, out, _strip_for(c, cmd.full_name))


def container(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    """OBJECT, XINFO, XGROUP, MEMORY, SCRIPT, FUNCTION: the subcommand decides."""
    sub = cmd.subcommands.get(argv[1].lower()) if len(argv) > 1 else None
    if sub is None:
        if len(argv) < 2:
            return _arity_error(c, cmd)
        shown = argv[1][:64].decode("utf-8", "replace")
        c.reply(wire.error(f"ERR unknown subcommand '{shown}'. Try "
                           f"{cmd.full_name.upper()} HELP."))
        if c.in_multi:
            c.multi_error = True
        return True
    if sub.kind == "refuse":
        return c.refuse_text(sub, sub.reason)
    if _quota(c, sub, argv):
        return True
    positions = sub.key_positions(argv)
    out = c.ns.rewrite(argv, positions) if positions else raw
    return c._send(sub, argv, out, None)


def copy(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if any(a.upper() == b"DB" for a in argv[3:]):
        return c.refuse_text(cmd, "COPY ... DB: each tenant database has a single logical "
                                  "database (0)")
    return keys(c, cmd, argv, raw)


def keys(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if _quota(c, cmd, argv):
        return True
    positions = cmd.key_positions(argv)
    out = c.ns.rewrite(argv, positions) if positions else raw
    return c._send(cmd, argv, out, None)


def refuse(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    return c.refuse_text(cmd, cmd.reason)


# -- blocking -------------------------------------------------------------------------------
def _unblock(c: RedisConnection) -> None:
    c.blocked -= 1


def _send_blocking(c: RedisConnection, cmd: Command, argv: list[bytes], out: bytes,
                   transform: Callable[[bytes], bytes] | None, raw: bytes) -> bool:
    if c.in_multi:  # queued: runs without blocking at EXEC
        return c._send(cmd, argv, out, transform)

    def then(up: Upstream) -> bool:
        c.blocked += 1
        return c._send(cmd, argv, out, transform, up=up, post=_unblock)
    return c.with_dedicated(argv, raw, then)


def blocking(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if _quota(c, cmd, argv):
        return True
    positions = cmd.key_positions(argv)
    out = c.ns.rewrite(argv, positions) if positions else raw
    return _send_blocking(c, cmd, argv, out, _strip_for(c, cmd.full_name), raw)


def xread(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if _quota(c, cmd, argv):
        return True
    is_blocking = False
    for a in argv[1:]:
        up = a.upper()
        if up == b"STREAMS":
            break
        if up == b"BLOCK":
            is_blocking = True
    positions = cmd.key_positions(argv)
    out = c.ns.rewrite(argv, positions) if positions else raw
    if is_blocking:
        return _send_blocking(c, cmd, argv, out, c.ns.strip_streams, raw)
    return c._send(cmd, argv, out, c.ns.strip_streams)


# -- local: connection state kept in the gateway ----------------------------------------------
def local(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    name = cmd.full_name
    if name in ("ping", "echo"):
        if not _arity_ok(cmd, argv):
            return _arity_error(c, cmd)
        if c.dedicated is not None:  # keep order with pub/sub and MULTI on that connection
            return c._send(cmd, argv, raw, None)
        if name == "echo":
            c.reply(wire.bulk(argv[1]))
        else:
            c.reply(wire.PONG if len(argv) == 1 else wire.bulk(argv[1]))
        return True
    if name == "hello":
        user = _hello_auth_user(argv)
        if user is not None and names_another_database(c, user):
            c.reply(NO_SWITCH)
            return True
        return c._hello(argv)
    if name == "auth":
        if len(argv) == 3:
            if names_another_database(c, argv[1]):
                c.reply(NO_SWITCH)  # at once: no lookup that would time other tenants
                return True
            return c._spawn(c._auth(argv[1], argv[2], None))
        if len(argv) == 2:
            c.reply(wire.error("WRONGPASS the gateway needs a user name: AUTH <tenant> "
                               "<password>"))
            return True
        return _arity_error(c, cmd)
    if name == "command":
        if c.in_multi:
            return _not_in_multi(c, cmd)
        return c._send(cmd, argv, raw, None)
    if c.in_multi:
        return _not_in_multi(c, cmd)
    if name == "select":
        if len(argv) != 2:
            return _arity_error(c, cmd)
        if argv[1] != b"0":
            try:
                int(argv[1])
            except ValueError:
                c.reply(wire.error("ERR value is not an integer or out of range"))
                return True
            c.reply(wire.error("ERR DB index is out of range (each tenant database has one "
                               "logical database, 0; log in as <tenant>.<database> to use "
                               "another tenant database)"))
            return True
        c.reply(wire.OK)
        return True
    if name in ("quit", "reset"):
        if c.recv != c.sent:
            return c._stall(lambda: local(c, cmd, argv, raw))
        if name == "quit":
            c.reply(wire.OK)
            c.close()
            return True
        c.deauthenticate()
        c.reply(b"+RESET\r\n")
        return True
    if name == "client":
        return _client(c, cmd, argv)
    if name == "acl":
        if len(argv) >= 2 and argv[1].lower() == b"whoami":
            c.reply(wire.bulk(c.session.user.encode()))
            return True
        sub = argv[1].decode("utf-8", "replace").upper() if len(argv) > 1 else ""
        return c.refuse_text(cmd, f"ACL {sub}: users and permissions are managed by the "
                                  "platform".strip())
    return c.refuse_text(cmd, "not supported through the gateway")


def _hello_auth_user(argv: list[bytes]) -> bytes | None:
    """The user of ``HELLO <protover> AUTH <user> <password> [SETNAME <name>]`` when the
    version and options are well formed (a malformed HELLO gets its error from ``_hello``)."""
    if len(argv) < 2 or argv[1] not in (b"2", b"3"):
        return None
    i, user = 2, None
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"auth" and i + 2 < len(argv):
            user = argv[i + 1]
            i += 3
        elif opt == b"setname" and i + 1 < len(argv):
            i += 2
        else:
            return None
    return user


def _sockname(c: RedisConnection) -> tuple[str, int]:
    """The gateway's end of the client's connection (``laddr``, ``fd``)."""
    t = c.transport
    sock = t.get_extra_info("socket") if t is not None else None
    name = t.get_extra_info("sockname") if t is not None else None
    laddr = f"{name[0]}:{name[1]}" if isinstance(name, tuple) and len(name) >= 2 else ""
    fd = sock.fileno() if sock is not None else -1
    return laddr, fd


def _client_line(c: RedisConnection, me: RedisConnection, cmd: str) -> bytes:
    """One line of CLIENT LIST (and CLIENT INFO) in Redis 7's field order; ``me`` is the
    connection asking, whose ``cmd`` is the command it is running."""
    s = c.session
    age = int(time.monotonic() - s.opened_at)
    name = (c.name or b"").decode("utf-8", "replace")
    flags = ""
    if c.in_multi:
        flags += "x"
    if c.blocked:
        flags += "b"
    if c.subs or c.ssubs:
        flags += "P"
    lib_name = c.lib_name.decode("utf-8", "replace")
    lib_ver = c.lib_ver.decode("utf-8", "replace")
    laddr, fd = _sockname(c)
    idle = 0 if c is me else registry_of(c.tdb).idle(c)
    shown = cmd if c is me else "NULL"  # the gateway does not record others' commands
    multi = len(c.multi_transforms) if c.in_multi else -1
    events = "rw" if c.write_paused else "r"
    return (f"id={s.id} addr={s.client_addr} laddr={laddr} fd={fd} name={name} age={age} "
            f"idle={idle} flags={flags or 'N'} db=0 sub={c.subs} psub=0 ssub={c.ssubs} "
            f"multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 "
            f"oll=0 omem=0 tot-mem=0 events={events} cmd={shown} user={s.user} redir=-1 "
            f"resp={c.proto} lib-name={lib_name} lib-ver={lib_ver}\n").encode()


def _client_type(c: RedisConnection) -> str:
    return "pubsub" if c.subs or c.ssubs else "normal"


CLIENT_TYPES = ("normal", "master", "replica", "slave", "pubsub")


def _client_list(c: RedisConnection, cmd: Command, argv: list[bytes]) -> bool:
    """CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]: the connections of the
    client's own tenant database through this gateway (other tenants' ids match nothing,
    as ids that do not exist)."""
    conns = registry_of(c.tdb).live()
    if c not in conns:  # (not registered: a connection made before the registry existed)
        conns.append(c)
    i = 2
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"type" and i + 1 < len(argv):
            text = argv[i + 1][:64].decode("utf-8", "replace")
            kind = text.lower()
            if kind not in CLIENT_TYPES:
                c.reply(wire.error(f"ERR Unknown client type '{text}'"))
                return True
            kind = "replica" if kind == "slave" else kind
            conns = [o for o in conns if _client_type(o) == kind]
            i += 2
        elif opt == b"id" and i + 1 < len(argv):
            ids = set()
            for a in argv[i + 1:]:
                n = _client_id(a)
                if n is None:
                    c.reply(wire.error("ERR Invalid client ID"))
                    return True
                ids.add(n)
            conns = [o for o in conns if o.session.id in ids]
            i = len(argv)
        else:
            c.reply(wire.error("ERR syntax error"))
            return True
    c.reply(wire.verbatim(b"".join(_client_line(o, c, "client|list") for o in conns), c.proto))
    return True


def _client_id(arg: bytes) -> int | None:
    """A client id as Redis reads it (a positive decimal integer), else None."""
    if not arg.isdigit() or len(arg) > 19 or (arg[:1] == b"0" and len(arg) > 1):
        return None
    n = int(arg)
    return n if n > 0 else None


def _client_kill(c: RedisConnection, cmd: Command, argv: list[bytes]) -> bool:
    """CLIENT KILL ip:port (old form: +OK or "No such client"), or CLIENT KILL with filters
    ID, ADDR, LADDR, USER, TYPE, SKIPME (new form: the number killed), among the client's
    own tenant database's connections only: another tenant's connection is as unknown as
    one that does not exist."""
    if len(argv) < 3:
        return _arity_error(c, cmd)
    conns = registry_of(c.tdb).live()
    if c not in conns:
        conns.append(c)
    old_form = len(argv) == 3
    skipme = not old_form
    if old_form:
        addr = argv[2].decode("utf-8", "replace")
        conns = [o for o in conns if o.session.client_addr == addr]
    elif len(argv) % 2 != 0:
        c.reply(wire.error("ERR syntax error"))
        return True
    else:
        slug, dbname = c.tdb.tenant, c.tdb.name
        for i in range(2, len(argv), 2):
            opt, value = argv[i].lower(), argv[i + 1]
            text = value.decode("utf-8", "replace")
            if opt == b"id":
                n = _client_id(value)
                if n is None:
                    c.reply(wire.error("ERR client-id should be greater than 0"))
                    return True
                conns = [o for o in conns if o.session.id == n]
            elif opt == b"type":
                kind = text.lower()
                if kind not in CLIENT_TYPES:
                    c.reply(wire.error(f"ERR Unknown client type '{text[:64]}'"))
                    return True
                kind = "replica" if kind == "slave" else kind
                conns = [o for o in conns if _client_type(o) == kind]
            elif opt == b"addr":
                conns = [o for o in conns if o.session.client_addr == text]
            elif opt == b"laddr":
                conns = [o for o in conns if _sockname(o)[0] == text]
            elif opt == b"user":
                # Both names log in as the one user of this tenant database.
                if text not in (slug, f"{slug}.{dbname}"):
                    c.reply(wire.error(f"ERR No such user '{text[:64]}'"))
                    return True
            elif opt == b"skipme":
                if value.lower() not in (b"yes", b"no"):
                    c.reply(wire.error("ERR syntax error"))
                    return True
                skipme = value.lower() == b"yes"
            else:
                c.reply(wire.error("ERR syntax error"))
                return True
    if skipme:
        conns = [o for o in conns if o is not c]
    killed = len(conns)
    for o in conns:
        if o is not c:
            o.close()
    if old_form:
        c.reply(wire.OK if killed else wire.error("ERR No such client"))
    else:
        c.reply(wire.integer(killed))
    if c in conns:  # like Redis: the reply first (after those owed), then the close
        if c.recv != c.sent:
            return c._stall(lambda: _close_self(c))
        c.close()
    return True


def _close_self(c: RedisConnection) -> bool:
    c.close()
    return False  # nothing after the KILL runs


def _client_setinfo(c: RedisConnection, cmd: Command, argv: list[bytes]) -> bool:
    """CLIENT SETINFO LIB-NAME|LIB-VER <value> (Redis 7.2): redis-py sends it on connect."""
    if len(argv) != 4:
        return _arity_error(c, cmd)
    attr, value = argv[2].lower(), argv[3]
    if attr not in (b"lib-name", b"lib-ver"):
        shown = argv[2][:64].decode("utf-8", "replace")
        c.reply(wire.error(f"ERR Unrecognized option '{shown}'"))
        return True
    if any(ch < 33 or ch > 126 for ch in value):
        c.reply(wire.error(f"ERR {attr.decode()} cannot contain spaces, newlines or special "
                           "characters."))
        return True
    if attr == b"lib-name":
        c.lib_name = value[:128]
    else:
        c.lib_ver = value[:128]
    c.reply(wire.OK)
    return True


#: Real CLIENT subcommands the gateway refuses by design besides KILL/PAUSE/UNPAUSE/UNBLOCK
#: (client-side caching needs server-side tracking of keys across tenants); any other
#: unsupported name gets Redis's own unknown-subcommand error.
REFUSED_CLIENT_SUBCOMMANDS = frozenset({b"caching", b"getredir", b"tracking", b"trackinginfo"})


def _client(c: RedisConnection, cmd: Command, argv: list[bytes]) -> bool:
    if len(argv) < 2:
        return _arity_error(c, cmd)
    sub = argv[1].lower()
    if sub == b"id":
        c.reply(wire.integer(c.session.id))
    elif sub == b"setinfo":
        return _client_setinfo(c, cmd, argv)
    elif sub == b"getname":
        c.reply(wire.bulk(c.name, c.proto))
    elif sub == b"setname":
        if len(argv) != 3:
            return _arity_error(c, cmd)
        name = argv[2]
        if any(ch <= 32 or ch > 126 for ch in name):
            c.reply(wire.error("ERR Client names cannot contain spaces, newlines or special "
                               "characters."))
            return True
        c.name = name or None
        c.reply(wire.OK)
    elif sub == b"info":
        if len(argv) != 2:
            return _arity_error(c, cmd)
        c.reply(wire.verbatim(_client_line(c, c, "client|info"), c.proto))
    elif sub == b"list":
        return _client_list(c, cmd, argv)
    elif sub == b"kill":
        return _client_kill(c, cmd, argv)
    elif sub == b"no-evict":
        if len(argv) != 3 or argv[2].lower() not in (b"on", b"off"):
            c.reply(wire.error("ERR syntax error"))
            return True
        c.no_evict = argv[2].lower() == b"on"  # the upstream connection is the gateway's
        c.reply(wire.OK)
    elif sub == b"reply":
        mode = argv[2].lower() if len(argv) == 3 else b""
        if mode == b"on":
            c.reply_off = c.skip_next = False
            c.reply(wire.OK)
        elif mode == b"off":
            c.reply_off = True
        elif mode == b"skip":
            c.skip_next = True
        else:
            c.reply(wire.error("ERR syntax error"))
    elif sub == b"help":
        lines = [b"CLIENT <subcommand> [<arg> ...]. Through the gateway:",
                 b"ID", b"GETNAME", b"SETNAME <name>", b"SETINFO (LIB-NAME|LIB-VER) <value>",
                 b"INFO", b"LIST [TYPE <type>] [ID <id> ...]",
                 b"KILL <ip:port> | KILL (ID|ADDR|LADDR|USER|TYPE|SKIPME) <value> ...",
                 b"NO-EVICT (ON|OFF)", b"REPLY (ON|OFF|SKIP)", b"HELP"]
        c.reply(wire.array([b"+%s\r\n" % line for line in lines]))
    elif sub in (b"pause", b"unpause", b"unblock"):
        shown = sub.decode().upper()
        return c.refuse_text(cmd, f"CLIENT {shown} could act on other tenants' connections")
    elif sub in REFUSED_CLIENT_SUBCOMMANDS:
        shown = sub.decode().upper()
        return c.refuse_text(cmd, f"CLIENT {shown} is not supported through the gateway "
                                  "(supported: ID, GETNAME, SETNAME, SETINFO, INFO, LIST, "
                                  "KILL, NO-EVICT, REPLY, HELP)")
    else:
        # A subcommand Redis 7.0 does not know either (redis-py 8's MAINT_NOTIFICATIONS
        # probe): the very same answer, and not a refusal, since nothing was refused.
        shown = argv[1][:128].decode("utf-8", "replace")
        c.reply(wire.error(f"ERR unknown subcommand '{shown}'. Try CLIENT HELP."))
    return True


# -- transactions ---------------------------------------------------------------------------
def tx(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    name = cmd.full_name
    if not _arity_ok(cmd, argv):  # here, or "MULTI x" would leave the gateway in a MULTI
        return _arity_error(c, cmd)  # that the server refused
    if name == "multi":
        if c.in_multi:
            c.reply(wire.error("ERR MULTI calls can not be nested"))
            return True

        def then(up: Upstream) -> bool:
            done = c._send(cmd, argv, raw, None, up=up)
            c.in_multi = True
            c.multi_error = False
            c.multi_transforms = []
            return done
        return c.with_dedicated(argv, raw, then)
    if name == "exec":
        if not c.in_multi:
            c.reply(wire.error("ERR EXEC without MULTI"))
            return True
        transforms = c.multi_transforms
        c.in_multi = c.watching = False
        c.multi_transforms = []
        if c.multi_error:
            c.multi_error = False
            c.skip_next = True  # the DISCARD's own +OK
            c._send(cmd, argv, wire.encode_command([b"DISCARD"]), None)
            c.reply(wire.error("EXECABORT Transaction discarded because of previous errors."))
            return True
        return c._send(cmd, argv, raw, c.ns.exec_transform(transforms))
    if name == "discard":
        if not c.in_multi:
            c.reply(wire.error("ERR DISCARD without MULTI"))
            return True
        c.in_multi = c.watching = c.multi_error = False
        c.multi_transforms = []
        return c._send(cmd, argv, raw, None)
    if name == "watch":
        if c.in_multi:
            return c._send(cmd, argv, raw, None)  # the server answers the error
        if len(argv) < 2:
            return _arity_error(c, cmd)
        positions = cmd.key_positions(argv)
        out = c.ns.rewrite(list(argv), positions)

        def then_watch(up: Upstream) -> bool:
            c.watching = True
            return c._send(cmd, argv, out, None, up=up)
        return c.with_dedicated(argv, raw, then_watch)
    # unwatch
    if c.dedicated is not None:
        c.watching = False
        return c._send(cmd, argv, raw, None)
    c.reply(wire.OK)
    return True


# -- pub/sub --------------------------------------------------------------------------------
def subscribe(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    name = cmd.full_name
    is_pattern = name in ("psubscribe", "punsubscribe")
    unsub = "unsubscribe" in name
    if not unsub and len(argv) < 2:
        return _arity_error(c, cmd)
    try:
        out_argv = [argv[0]] + [c.ns.channel(a, pattern=is_pattern) for a in argv[1:]]
    except ChannelRefused as exc:
        return c.refuse_text(cmd, str(exc))
    if name == "psubscribe":
        # Redis's ACL matches a subscription *pattern* literally against the user's channel
        # rules, so each prefixed pattern is granted to the tenant's ACL user first (safe:
        # it starts with the tenant's prefix, so it can only match the tenant's channels).
        missing = [p for p in out_argv[1:] if p not in c.tdb.granted]
        if missing:
            async def grant() -> bool:
                await c.backend.grant_patterns(c.tdb, missing)
                c.suspended = False
                return subscribe(c, cmd, argv, raw)
            return c._spawn(grant())
    out = wire.encode_command(out_argv)
    if unsub and c.dedicated is None:
        # Not subscribed: the server's answer, without asking it.
        kind = argv[0].lower()
        names: list[bytes | None] = [*argv[1:]] or [None]
        push = b">" if c.proto == 3 else b"*"
        for ch in names:
            c.reply(wire.array([wire.bulk(kind), wire.bulk(ch, c.proto), wire.integer(0)],
                               push))
        return True
    if c.in_multi:  # would switch the connection to pub/sub at EXEC, behind our back
        return _not_in_multi(c, cmd)

    def then(up: Upstream) -> bool:
        if c.recv != c.sent and c.upstream is not up:
            return c._stall(lambda: then(up))
        up.pubsub_client = c
        c.upstream = up
        c.send_subscribe(up, out)  # c.subs/ssubs follow the confirmations
        return True
    return c.with_dedicated(argv, raw, then)


def publish(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if len(argv) != 3:
        return _arity_error(c, cmd)
    try:
        channel = c.ns.channel(argv[1])
    except ChannelRefused as exc:
        return c.refuse_text(cmd, str(exc))
    return c._send(cmd, argv, wire.encode_command([argv[0], channel, argv[2]]), None)


def pubsub(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    sub = cmd.subcommands.get(argv[1].lower()) if len(argv) > 1 else None
    if sub is None:
        return container(c, cmd, argv, raw)
    if sub.kind == "refuse":
        return c.refuse_text(sub, sub.reason)
    if c.in_multi:
        return _not_in_multi(c, sub)
    ns = c.ns
    if sub.name in ("channels", "shardchannels"):
        if len(argv) > 3:
            return _arity_error(c, sub)
        pattern = ns.channel(argv[2], pattern=True) if len(argv) == 3 else ns.escaped + b"*"
        out = wire.encode_command([argv[0], argv[1], pattern])
        return send_admin(c, sub, argv, out, ns.strip_channels)
    if sub.name in ("numsub", "shardnumsub"):
        try:
            chans = [ns.channel(a) for a in argv[2:]]
        except ChannelRefused as exc:
            return c.refuse_text(sub, str(exc))
        out = wire.encode_command([argv[0], argv[1], *chans])
        return send_admin(c, sub, argv, out, ns.strip_numsub)
    return c._send(sub, argv, raw, None)


# -- key patterns: on the gateway's admin connection ----------------------------------------
def send_admin(c: RedisConnection, cmd: Command, argv: list[bytes], out: bytes,
               transform: Callable[[bytes], bytes] | None) -> bool:
    admin = c.backend.admin
    up = admin.shared_now(c.proto, 0)
    if up is not None:
        return c._send(cmd, argv, out, transform, up=up)

    async def connect() -> bool:
        up = await admin.get_shared(c.proto, 0)
        c.suspended = False
        return c._send(cmd, argv, out, transform, up=up)
    return c._spawn(connect())


def pattern(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if c.in_multi:
        return _not_in_multi(c, cmd)
    if not _arity_ok(cmd, argv):
        return _arity_error(c, cmd)
    ns = c.ns
    # SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: force the prefix into MATCH
    new = list(argv)
    matched = False
    i = 2
    while i < len(new):
        opt = new[i].upper()
        if opt == b"MATCH" and i + 1 < len(new):
            new[i + 1] = ns.pattern(new[i + 1])
            matched = True
            i += 2
        elif opt in (b"COUNT", b"TYPE") and i + 1 < len(new):
            i += 2
        else:
            i += 1  # the server reports the syntax error
    if not matched:
        new += [b"MATCH", ns.pattern(b"*")]
    return send_admin(c, cmd, argv, wire.encode_command(new), ns.strip_scan)


def sort(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    """SORT key [BY pattern] [LIMIT o c] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dst].

    BY/GET patterns name other keys: they get the prefix too. Redis refuses BY/GET to users
    without access to every key, so such a SORT runs on the gateway's admin connection: the
    prefixed patterns can only reach this tenant's keys. ``GET #`` is the element itself
    (no other key), but Redis refuses it to such users all the same: a lone ``GET #`` is
    dropped (``SORT k GET #`` is ``SORT k``) and the SORT stays on the tenant's connection;
    next to other GETs or a BY pattern, the SORT goes to the admin connection anyway."""
    if len(argv) < 2:
        return _arity_error(c, cmd)
    ns = c.ns
    new = list(argv)
    new[1] = ns.prefix + new[1]
    needs_admin = False
    stores = False
    gets = 0
    get_self = -1  # index of a GET # option
    i = 2
    while i < len(new):
        opt = new[i].upper()
        if opt in (b"BY", b"GET") and i + 1 < len(new):
            if opt == b"GET":
                gets += 1
            if opt == b"GET" and new[i + 1] == b"#":
                get_self = i
            elif new[i + 1] != b"#":  # (BY #: a constant, no sorting, no key read)
                new[i + 1] = ns.prefix + new[i + 1]
                needs_admin = True
            i += 2
        elif opt == b"STORE" and i + 1 < len(new):
            new[i + 1] = ns.prefix + new[i + 1]
            stores = True
            i += 2
        elif opt == b"LIMIT":
            i += 3
        else:
            i += 1
    if get_self >= 0:
        if gets == 1 and not needs_admin:
            del new[get_self:get_self + 2]
        else:
            needs_admin = True
    if stores and c.tdb.over_quota is not None:
        return c._refuse(cmd, argv, c.tdb.over_quota)
    out = wire.encode_command(new)
    if needs_admin:
        if c.in_multi:
            return _not_in_multi(c, cmd)
        return send_admin(c, cmd, argv, out, None)
    return c._send(cmd, argv, out, None)


# -- emulated: answered from a scan of the tenant's prefix ----------------------------------
def emulate(c: RedisConnection, cmd: Command, argv: list[bytes], raw: bytes) -> bool:
    if c.in_multi:
        return _not_in_multi(c, cmd)
    if c.recv != c.sent:
        return c._stall(lambda: emulate(c, cmd, argv, raw))

    async def run() -> None:
        op = await c.admit_local(cmd, argv)
        try:
            reply = await c.backend.emulate(cmd.full_name, c.tdb, argv, c)
        except Reject:
            raise
        except Exception as exc:
            reply = wire.error(f"ERR {cmd.full_name.upper()} failed in the gateway: {exc}")
        if op is not None:
            op.ended = time.monotonic()
            op.bytes_out = len(reply)
            if reply[:1] == b"-":
                op.error = "ERR"
            c.chain.complete(op)
        c.session.operations += 1
        c.reply(reply)
    return c._spawn(run())


HANDLERS: dict[str, Handler] = {
    "keys": keys, "keyed": keyed, "container": container, "copy": copy, "refuse": refuse,
    "blocking": blocking, "xread": xread, "local": local, "tx": tx, "subscribe": subscribe,
    "publish": publish, "pubsub": pubsub, "pattern": pattern, "sort": sort,
    "emulate": emulate,
}

__all__ = ["HANDLERS", "Reason"]
