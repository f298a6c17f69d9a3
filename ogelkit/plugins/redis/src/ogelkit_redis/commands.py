"""The command table, built from what the upstream server reports (``COMMAND INFO``).

Key positions come from the server's *key specifications* (Redis 7), evaluated generically
(``index``/``keyword`` begin-search, ``range``/``keynum`` find-keys), so every key-taking
command the server knows, modules included, is namespaced without a hand-written list. What
*is* hand-written is the gateway's policy: commands handled by the gateway itself (auth,
connection state, transactions, pub/sub), commands that need the tenant's key *patterns*
rewritten (``KEYS``, ``SCAN``, ``SORT ... BY``), replies that name keys, and commands refused
because they reach across tenants or act on the server.
"""

from __future__ import annotations

from typing import Any

from ogelkit_redis.wire import Frame

# -- key specifications ---------------------------------------------------------------------


class KeySpec:
    __slots__ = (
        "begin",
        "find",
        "firstkey",
        "flags",
        "keynumidx",
        "keystep",
        "keyword",
        "lastkey",
        "limit",
        "pos",
        "startfrom",
    )

    def __init__(self, raw: dict[bytes, Any]):
        bs = raw.get(b"begin_search", {})
        fk = raw.get(b"find_keys", {})
        self.flags = {f.decode().lower() for f in raw.get(b"flags", [])}
        self.begin = bs.get(b"type", b"unknown").decode()
        bspec = bs.get(b"spec", {})
        self.pos = bspec.get(b"index", 0)
        self.keyword = bspec.get(b"keyword", b"").lower()
        self.startfrom = bspec.get(b"startfrom", 0)
        self.find = fk.get(b"type", b"unknown").decode()
        fspec = fk.get(b"spec", {})
        self.lastkey = fspec.get(b"lastkey", 0)
        self.keystep = fspec.get(b"keystep", 1) or 1
        self.limit = fspec.get(b"limit", 0)
        self.keynumidx = fspec.get(b"keynumidx", 0)
        self.firstkey = fspec.get(b"firstkey", 1)

    @property
    def known(self) -> bool:
        return self.begin != "unknown" and self.find != "unknown"

    def positions(self, argv: list[bytes], out: list[int]) -> None:
        """Append the indexes of ``argv`` that are keys under this spec (Redis's algorithm)."""
        argc = len(argv)
        if self.begin == "index":
            first = self.pos
        elif self.begin == "keyword":
            first = -1
            rng = (range(self.startfrom, argc) if self.startfrom >= 0
                   else range(argc + self.startfrom, 0, -1))
            for i in rng:
                if 0 < i < argc and argv[i].lower() == self.keyword:
                    first = i + 1
                    break
            if first < 0:
                return
        else:
            return
        if first >= argc:
            return
        if self.find == "range":
            if self.lastkey >= 0:
                last = first + self.lastkey
            elif self.limit <= 1:
                last = argc + self.lastkey
            else:
                last = first + ((argc - first) // self.limit + self.lastkey)
            last = min(last, argc - 1)
            out.extend(range(first, last + 1, self.keystep))
        elif self.find == "keynum":
            idx = first + self.keynumidx
            if idx >= argc:
                return
            try:
                numkeys = int(argv[idx])
            except ValueError:
                return  # the server answers the error itself
            start = first + self.firstkey
            if numkeys <= 0:
                return
            last = start + (numkeys - 1) * self.keystep
            if last >= argc:
                return  # malformed: the server will say so; nothing to prefix safely
            out.extend(range(start, last + 1, self.keystep))


def _flat_map(value: Any) -> dict[bytes, Any]:
    """RESP2 flat ``[k, v, k, v]`` arrays (key specs) to dicts, recursively."""
    if isinstance(value, list) and len(value) % 2 == 0 and all(
            isinstance(k, bytes) for k in value[0::2]):
        return {k: _flat_map(v) for k, v in zip(value[0::2], value[1::2], strict=True)}
    return value


def to_python(frame: Frame) -> Any:
    """Frame tree to plain Python (bytes, int, list) for the command table."""
    if isinstance(frame.value, list):
        items = [to_python(f) for f in frame.value]
        if frame.kind == 37:  # RESP3 map: flatten like RESP2
            return items
        return items
    if frame.kind == 58:  # ':'
        return int(frame.value)
    return frame.value


# -- the policy -----------------------------------------------------------------------------
#: Handled by the gateway itself: connection state lives in the gateway, not upstream.
LOCAL = {"auth", "hello", "ping", "echo", "select", "quit", "reset", "client", "acl",
         "command"}
TRANSACTION = {"multi", "exec", "discard", "watch", "unwatch"}
SUBSCRIBE = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
             "sunsubscribe"}
#: Run on the gateway's own (admin) connection with the tenant's prefix forced into the
#: pattern: the tenant's ACL user may not list keys (a script could list everyone's).
PATTERN = {"scan"}
#: Answered from a scan of the tenant's prefix (the server-wide versions count everyone).
#: KEYS too: the server's KEYS would block every tenant for a walk of the whole keyspace.
EMULATED = {"keys", "randomkey", "dbsize", "flushdb", "info"}
#: Replies that carry key names, which lose the tenant's prefix on the way out.
KEYED_REPLY = {"blpop", "brpop", "bzpopmin", "bzpopmax", "blmpop", "bzmpop", "lmpop", "zmpop",
               "xread", "xreadgroup", "keys", "scan", "randomkey"}
#: Blocking commands: a dedicated upstream connection for the duration of the call.
BLOCKING = {"blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax", "blmpop",
            "bzmpop"}

_SERVER = "it acts on the whole shared Redis server, not on your keyspace"
REFUSED: dict[str, str] = {
    "flushall": "FLUSHALL would empty every tenant's data; use FLUSHDB, which empties only "
                "your keyspace",
    "config": _SERVER, "debug": _SERVER, "shutdown": _SERVER, "save": _SERVER,
    "bgsave": _SERVER, "bgrewriteaof": _SERVER, "lastsave": _SERVER, "replicaof": _SERVER,
    "slaveof": _SERVER, "sync": _SERVER, "psync": _SERVER, "replconf": _SERVER,
    "failover": _SERVER, "module": _SERVER, "slowlog": "it shows other tenants' commands",
    "latency": _SERVER, "role": _SERVER, "cluster": "the gateway is not a cluster",
    "readonly": "the gateway is not a cluster", "readwrite": "the gateway is not a cluster",
    "asking": "the gateway is not a cluster",
    "monitor": "it would show every tenant's commands",
    "migrate": "it moves keys to another server, outside the gateway",
    "move": "each tenant database has a single logical database (0)",
    "swapdb": "each tenant database has a single logical database (0)",
    "wait": "replication acknowledgements belong to the shared server, not to one tenant",
    "waitaof": "replication acknowledgements belong to the shared server, not to one tenant",
    "restore": "DUMP payloads from clients could corrupt the shared server",
    "restore-asking": "DUMP payloads from clients could corrupt the shared server",
    "pfdebug": _SERVER, "pfselftest": _SERVER,
}
#: Subcommands refused or handled specially, by container.
SUBCOMMAND_REFUSED: dict[str, str] = {
    "script|flush": "the script cache is shared by every tenant",
    "script|kill": "it could stop another tenant's script",
    "function|load": "functions are shared by every tenant; only the operator loads them",
    "function|delete": "functions are shared by every tenant; only the operator manages them",
    "function|flush": "functions are shared by every tenant; only the operator manages them",
    "function|restore": "functions are shared by every tenant; only the operator manages them",
    "function|kill": "it could stop another tenant's function",
    "function|stats": "it shows other tenants' running functions",
    "function|dump": "functions are shared by every tenant; only the operator manages them",
    "memory|stats": _SERVER, "memory|doctor": _SERVER, "memory|malloc-stats": _SERVER,
    "memory|purge": _SERVER,
    "pubsub|numpat": "it counts every tenant's pattern subscriptions",
    "object|help": "",  # allowed (no key); listed to keep the table explicit
}


class Command:
    """One command (or ``container|sub`` subcommand) as the upstream server describes it."""

    __slots__ = (
        "arity",
        "blocking",
        "categories",
        "denyoom",
        "first",
        "flags",
        "full_name",
        "kind",
        "last",
        "name",
        "one_key",
        "op_name",
        "reason",
        "specs",
        "step",
        "subcommands",
        "write",
    )

    def __init__(self, raw: list[Any], parent: Command | None = None):
        full = raw[0].decode().lower()
        self.full_name = full
        self.name = full.split("|")[-1]
        self.op_name: str = (parent.op_name if parent is not None else full.upper())
        self.arity = int(raw[1])
        self.flags = {f.decode().lower() for f in raw[2]}
        self.categories = {c.decode().lower().lstrip("@") for c in raw[6]} if len(raw) > 6 else set()
        self.specs = [KeySpec(_flat_map(s)) for s in (raw[8] if len(raw) > 8 else [])]
        self.subcommands: dict[bytes, Command] = {}
        for sub in (raw[9] if len(raw) > 9 else []) or []:
            cmd = Command(sub, self)
            self.subcommands[cmd.name.encode()] = cmd
        self.write = "write" in self.flags
        # Over a memory/key quota these are refused: the server's denyoom writes, and
        # scripts that may write (the server checks those only inside the script).
        self.denyoom = "denyoom" in self.flags or full in ("eval", "evalsha", "fcall")
        self.blocking = full in BLOCKING
        # Fast path for the common shape "keys at fixed positions" (one range spec).
        self.first = self.last = self.step = 0
        if (len(self.specs) == 1 and self.specs[0].begin == "index"
                and self.specs[0].find == "range" and self.specs[0].lastkey >= 0):
            s = self.specs[0]
            self.first, self.last, self.step = s.pos, s.pos + s.lastkey, s.keystep
        self.kind, self.reason = self._classify(parent)
        # The key's index for plain commands with exactly one key at a fixed position (GET,
        # SET, LPUSH ...), which the client prefixes without looking further; 0 otherwise.
        self.one_key = self.first if self.kind == "keys" and self.first == self.last else 0

    def _classify(self, parent: Command | None) -> tuple[str, str]:
        name = self.full_name
        top = parent.full_name if parent is not None else name
        if SUBCOMMAND_REFUSED.get(name):
            return "refuse", SUBCOMMAND_REFUSED[name]
        if top in REFUSED:
            return "refuse", REFUSED[top]
        if top in LOCAL:
            return "local", ""
        if top in TRANSACTION:
            return "tx", ""
        if top in SUBSCRIBE:
            return "subscribe", ""
        if top in PATTERN:
            return "pattern", ""
        if top in EMULATED:
            return "emulate", ""
        if top == "publish":
            return "publish", ""
        if top == "pubsub":
            return "pubsub", ""
        if top in ("sort", "sort_ro"):
            return "sort", ""
        if top in ("xread", "xreadgroup"):
            return "xread", ""
        if top == "copy":
            return "copy", ""
        if self.subcommands:
            return "container", ""
        if "admin" in self.categories or "dangerous" in self.categories:
            return "refuse", _SERVER
        if any(not s.known or "incomplete" in s.flags for s in self.specs):
            return "refuse", "its key names cannot be found from its arguments, so it " \
                             "cannot be confined to your keyspace"
        if self.blocking:
            return "blocking", ""
        if top in KEYED_REPLY:
            return "keyed", ""
        return "keys", ""

    def key_positions(self, argv: list[bytes]) -> list[int]:
        out: list[int] = []
        if self.first:
            last = self.last if self.last < len(argv) else len(argv) - 1
            return list(range(self.first, last + 1, self.step))
        for spec in self.specs:
            spec.positions(argv, out)
        return out

    def __repr__(self) -> str:
        return f"<Command {self.full_name} {self.kind}>"


class CommandTable:
    """Commands by lower-case name (bytes), as the upstream reports them."""

    def __init__(self, entries: list[list[Any]], version: str = ""):
        self.version = version
        self.commands: dict[bytes, Command] = {}
        for raw in entries:
            if not raw:
                continue
            cmd = Command(raw)
            self.commands[cmd.full_name.encode()] = cmd
            self.commands[cmd.full_name.upper().encode()] = cmd
        self._lower = {k.lower(): v for k, v in self.commands.items()}

    def lookup(self, name: bytes) -> Command | None:
        cmd = self.commands.get(name)
        if cmd is None:
            cmd = self._lower.get(name.lower())
        return cmd

    def __len__(self) -> int:
        return len(self._lower)

    def __contains__(self, name: str) -> bool:
        return name.encode().lower() in self._lower
