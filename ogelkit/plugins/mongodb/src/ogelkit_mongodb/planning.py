"""Planning a client command: refuse it, answer it locally, or rewrite it for the upstream.

``$db`` and the few namespaces commands carry are rewritten by splicing bytes (the user's
documents are never decoded); ``bson.decode`` is used only on the small parts that must be
understood (pipelines, explain's inner command, killCursors' ids). Every planner is total:
a value of the wrong type is a ``Refusal`` answered in protocol, never an exception.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, cast

import bson

from ogelkit_mongodb import bsonraw, commands, errors, wire
from ogelkit_mongodb.commands import Refusal

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, GatewayContext, Session
    from ogelkit_mongodb.backend import MongoBackend
    from ogelkit_mongodb.request import Request


class UnknownDatabase(Refusal):
    """A ``$db`` that is not one of the tenant's databases (as far as this client knows)."""


@functools.lru_cache(maxsize=4096)
def string_value(text: str) -> bytes:
    """A BSON string value (length, bytes, NUL) for splicing (cached: the same database names
    and namespaces are spliced into every command and reply)."""
    raw = text.encode("utf-8", "surrogateescape")
    return bsonraw._I32.pack(len(raw) + 1) + raw + b"\0"


@functools.lru_cache(maxsize=64)
def _max_time_element(limit_text: str) -> tuple[int, bytes]:
    """The session's maxTimeMS setting as a number and as the element spliced into commands
    (int32 when it fits, as drivers send it); cached: every command of a tier has the same."""
    limit = int(limit_text)
    element = (bsonraw.int32_element("maxTimeMS", limit) if limit < 2**31
               else bsonraw.int64_element("maxTimeMS", limit))
    return limit, element


def cursor_id(data: bytes, t: int, v: int) -> int | None:
    """A cursor id element's value, or None when it is not an integer (MongoDB wants a long;
    int32 and integral doubles are accepted as drivers may send them)."""
    if t == bsonraw.INT64:
        return bsonraw.i64(data, v)[0]
    if t == bsonraw.INT32:
        return bsonraw.i32(data, v)[0]
    if t == bsonraw.DOUBLE:
        value = bsonraw.read_number(data, t, v)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() \
                and abs(value) < 2**63:
            return int(value)
    return None


class Planner:
    """The planning half of ``MongoConnection`` (a mixin: it reads the connection's tenant
    state and fills the ``Request``)."""

    session: Session | None
    ctx: GatewayContext
    databases: dict[str, DatabaseRecord]

    if TYPE_CHECKING:  # provided by LocalCommands
        def _local(self, name: str, db: str) -> dict[str, Any]: ...
        def _plan_list_databases(self, req: Request, doc: dict[str, Any]) -> None: ...

    def _plan(self, req: Request, m: wire.OpMsg, index: dict[str, Any], db: str) -> None:
        name = req.name
        data = m.data
        req.flags = m.flags
        if name in commands.LOCAL_ANY_TIME:
            req.local = self._local(name, db)
            return
        if commands.is_server_level(name):
            raise Refusal(errors.UNAUTHORIZED, f"{name} is a server-level command: the gateway "
                                               "does not let tenants run it")
        if db == "admin":
            self._plan_admin(req, m, index)
            return
        mode = commands.FORWARD.get(name)
        if mode is None:
            raise Refusal(errors.COMMAND_NOT_FOUND, f"no such command: '{name}' (the gateway "
                                                    "forwards only commands it knows)")
        record = self._record(db)
        req.mode = mode
        req.record = record
        backend = cast("MongoBackend", self.ctx.backends[record.backend])
        req.backend = backend
        req.upstream_db = record.upstream["database"]
        req.body = data[m.body_start:m.body_end]
        edits: list[bsonraw.Edit] = []
        el = index["$db"]
        edits.append((el[2], el[3], string_value(req.upstream_db)))
        if name in backend.max_time_commands:
            self._max_time(index, m, edits)
        if name == "getMore":
            self._plan_get_more(req, index, data)
        elif name == "killCursors":
            if self._plan_kill_cursors(req, index, data, edits):
                return
        elif name == "aggregate" or name in ("create", "collMod"):
            self._map_array(index.get("pipeline"), data, edits)
        elif name == "explain":
            self._plan_explain(index, data, edits)
        elif name == "dataSize":
            t, _e, v, q = index["dataSize"]
            if t == bsonraw.STRING:
                edits.append((v, q, string_value(self._map_ns(bsonraw.read_string(data, v)))))
        self._build(req, m, edits)

    def _build(self, req: Request, m: wire.OpMsg, edits: list[bsonraw.Edit]) -> None:
        data = m.data
        parts, size = bsonraw.splice(data, m.body_start, m.body_end, edits)
        view = memoryview(data)
        for _ident, s, e in m.sequences:
            parts.append(view[s:e])
            size += e - s
        flags = m.flags & ~(wire.CHECKSUM_PRESENT | wire.MORE_TO_COME | wire.EXHAUST_ALLOWED)
        assert req.backend is not None
        req.parts = wire.op_msg_parts(req.backend.pool.next_request_id(), 0, flags, parts, size)

    def _record(self, db: str) -> DatabaseRecord:
        record = self.databases.get(db)
        if record is None:
            mine = ", ".join(sorted(self.databases)) or "none"
            slug = self.session.tenant_slug if self.session else "<tenant>"
            raise UnknownDatabase(errors.UNAUTHORIZED,
                                  f"database '{db}' is not one of your databases (yours: {mine}); "
                                  f"provision it with `ogelkit databases create {slug} {db} "
                                  "--kind mongodb`")
        return record

    def _map_db(self, db: Any) -> str:
        if not isinstance(db, str):
            raise Refusal(errors.TYPE_MISMATCH, "a database name must be a string")
        return self._record(db).upstream["database"]

    def _map_ns(self, ns: str) -> str:
        db, dot, coll = ns.partition(".")
        if not dot:
            raise Refusal(errors.INVALID_NAMESPACE, f"invalid namespace '{ns}'")
        return f"{self._map_db(db)}.{coll}"

    def _max_time(self, index: dict[str, Any], m: wire.OpMsg, edits: list[bsonraw.Edit]) -> None:
        session = self.session
        limit_text = session.settings.get("maxTimeMS") if session is not None else None
        if not limit_text:
            return
        limit, element = _max_time_element(limit_text)
        el = index.get("maxTimeMS")
        if el is None:
            edits.append((m.body_end - 1, m.body_end - 1, element))
            return
        current = bsonraw.read_number(m.data, el[0], el[2])
        if current is None or not current > 0 or current > limit:  # NaN is replaced too
            edits.append((el[1], el[3], element))

    def _map_array(self, el: Any, data: bytes, edits: list[bsonraw.Edit]) -> None:
        if el is None or el[0] != bsonraw.ARRAY:
            return
        stages_doc = bson.decode(data[el[2]:el[3]])
        stages = list(stages_doc.values())
        if commands.map_pipeline(stages, self._map_db):
            edits.append((el[2], el[3], bson.encode({str(i): s for i, s in enumerate(stages)})))

    def _plan_explain(self, index: dict[str, Any], data: bytes, edits: list[bsonraw.Edit]) -> None:
        t, _e, v, q = index["explain"]
        if t != bsonraw.DOCUMENT:
            raise Refusal(errors.TYPE_MISMATCH, "explain needs the command to explain as a "
                                                "document")
        inner = bson.decode(data[v:q])
        inner_name = next(iter(inner), "")
        if commands.is_server_level(inner_name) or inner_name not in commands.FORWARD:
            raise Refusal(errors.UNAUTHORIZED, f"explain of {inner_name or 'nothing'} is not "
                                               "available through the gateway")
        if inner_name == "aggregate" and commands.map_pipeline(inner.get("pipeline"), self._map_db):
            edits.append((v, q, bson.encode(inner)))

    def _plan_get_more(self, req: Request, index: dict[str, Any], data: bytes) -> None:
        t, _e, v, _q = index["getMore"]
        cid = cursor_id(data, t, v)
        if cid is None:
            raise Refusal(errors.TYPE_MISMATCH, "field 'getMore' must be of type long")
        session = self.session
        assert req.backend is not None and session is not None
        if req.backend.cursors.owned(cid, session.tenant_slug or "") is None:
            raise Refusal(errors.CURSOR_NOT_FOUND, f"cursor id {cid} not found")
        req.cursor_id = cid

    def _plan_kill_cursors(self, req: Request, index: dict[str, Any], data: bytes,
                           edits: list[bsonraw.Edit]) -> bool:
        """True when answered locally (no cursor of this tenant among them)."""
        el = index.get("cursors")
        if el is None or el[0] != bsonraw.ARRAY:
            return False
        values = list(bson.decode(data[el[2]:el[3]]).values())
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
            raise Refusal(errors.TYPE_MISMATCH, "killCursors: every cursor id must be of type "
                                                "long")
        ids: list[int] = [int(x) for x in values]
        assert req.backend is not None and self.session is not None
        table, tenant = req.backend.cursors, self.session.tenant_slug or ""
        mine = [i for i in ids if table.owned(i, tenant) is not None]
        req.extra_not_found = [i for i in ids if i not in mine]
        for i in mine:
            table.remove(i)
        if not mine:
            req.local = {"cursorsKilled": [], "cursorsNotFound": [bson.Int64(i) for i in ids],
                         "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0}
            return True
        if req.extra_not_found:
            edits.append((el[2], el[3], bson.encode({str(i): bson.Int64(c)
                                                     for i, c in enumerate(mine)})))
        return False

    def _plan_admin(self, req: Request, m: wire.OpMsg, index: dict[str, Any]) -> None:
        name = req.name
        data = m.data
        if name not in commands.ADMIN:
            if name in commands.FORWARD:
                raise Refusal(errors.UNAUTHORIZED, f"{name} on the admin database is not "
                                                   "available through the gateway; use one of "
                                                   "your databases")
            raise Refusal(errors.COMMAND_NOT_FOUND, f"no such command: '{name}' (the gateway "
                                                    "forwards only commands it knows)")
        if name == "listDatabases":
            self._plan_list_databases(req, bson.decode(data[m.body_start:m.body_end]))
            return
        session = self.session
        assert session is not None and session.db is not None
        edits: list[bsonraw.Edit] = []
        record = session.db
        if name == "renameCollection":
            src_el, to_el = index.get("renameCollection"), index.get("to")
            if not src_el or not to_el or src_el[0] != bsonraw.STRING or to_el[0] != bsonraw.STRING:
                raise Refusal(errors.BAD_VALUE, "renameCollection needs 'from' and 'to' namespaces")
            src = bsonraw.read_string(data, src_el[2])
            dst = bsonraw.read_string(data, to_el[2])
            record = self._record(src.partition(".")[0])
            if self._record(dst.partition(".")[0]).backend != record.backend:
                raise Refusal(errors.BAD_VALUE, "cannot rename a collection across database "
                                                "servers")
            edits.append((src_el[2], src_el[3], string_value(self._map_ns(src))))
            edits.append((to_el[2], to_el[3], string_value(self._map_ns(dst))))
        req.mode = commands.GENERIC
        req.record = record
        req.backend = cast("MongoBackend", self.ctx.backends[record.backend])
        req.upstream_db = "admin"
        req.body = data[m.body_start:m.body_end]
        self._build(req, m, edits)
