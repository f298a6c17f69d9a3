"""Mapping an upstream reply back to the tenant: upstream database names to the tenant's,
cursor ownership, the usage figures (``op.rows``, ``op.written``, ``op.error``).

The common replies (a cursor batch, a write's ``n``) are passed through as memoryviews of the
upstream's bytes, with at most ``cursor.ns`` spliced; only error documents and generic
replies are decoded, mapped and re-encoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bson

from ogelkit_mongodb import bsonraw, commands, wire
from ogelkit_mongodb.planning import string_value
from ogelkit_mongodb.upstream import DECODE_OPTIONS

if TYPE_CHECKING:
    from ogelkit import Session
    from ogelkit_mongodb.request import MongoOperation


def number(buf: bytes, el: tuple[int, int, int, int] | None) -> int:
    if el is None:
        return 0
    value = bsonraw.read_number(buf, el[0], el[2])
    try:
        return int(value) if value is not None else 0
    except (ValueError, OverflowError):  # NaN or infinity
        return 0


class ReplyMapper:
    """The reply half of ``MongoConnection`` (a mixin)."""

    session: Session | None
    unmap: dict[str, str]
    #: raw upstream ``cursor.ns`` value -> (namespace, the tenant's value to splice or None);
    #: emptied whenever ``unmap`` changes.
    _ns_values: dict[bytes, tuple[str, bytes | None]]

    def _map_reply(self, op: MongoOperation, reply: bytes) -> tuple[list[Any], int]:
        req = op.request
        s, e = wire.reply_body(reply)
        index = bsonraw.index(reply, s)
        ok_el = index.get("ok")
        ok = bsonraw.read_number(reply, ok_el[0], ok_el[2]) if ok_el else 0
        if ok != 1:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            op.error = str(doc.get("code", "error"))
            if req.mode == commands.CURSOR and doc.get("code") == 43 and req.cursor_id:
                req.backend.cursors.remove(req.cursor_id)  # type: ignore[union-attr]
            body = bson.encode(self._unmap_deep(doc))
            return [body], len(body)
        mode = req.mode
        if mode == commands.CURSOR:
            return self._map_cursor_reply(op, reply, s, e, index)
        if mode == commands.WRITE or mode == commands.UPDATE:
            n = number(reply, index.get("nModified" if mode == commands.UPDATE else "n"))
            up = index.get("upserted")
            if up is not None and up[0] == bsonraw.ARRAY:
                n += bsonraw.count(reply, up[2])
            op.written = n
            if "writeErrors" in index or "writeConcernError" in index:
                op.error = "WriteError"
                body = bson.encode(self._unmap_deep(bson.decode(reply[s:e], DECODE_OPTIONS)))
                return [body], len(body)
        elif mode == commands.COUNT:
            op.rows = number(reply, index.get("n"))
        elif mode == commands.DISTINCT:
            el = index.get("values")
            op.rows = bsonraw.count(reply, el[2]) if el is not None and el[0] == bsonraw.ARRAY else 0
        elif mode == commands.FIND_AND_MODIFY:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            leo = doc.get("lastErrorObject") or {}
            op.written = int(leo.get("n", 0)) if isinstance(leo, dict) else 0
            op.rows = 0 if doc.get("value") is None else 1
        elif mode == commands.GENERIC:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            if req.extra_not_found:
                doc.setdefault("cursorsNotFound", []).extend(bson.Int64(i) for i in req.extra_not_found)
            body = bson.encode(self._unmap_deep(doc))
            return [body], len(body)
        return [memoryview(reply)[s:e]], e - s

    def _map_cursor_reply(self, op: MongoOperation, reply: bytes, s: int, e: int,
                          index: dict[str, Any]) -> tuple[list[Any], int]:
        req = op.request
        el = index.get("cursor")
        if el is None or el[0] != bsonraw.DOCUMENT:
            return [memoryview(reply)[s:e]], e - s
        cstart = el[2]
        cursor = bsonraw.index(reply, cstart)
        batch = cursor.get("firstBatch") or cursor.get("nextBatch")
        if batch is not None and batch[0] == bsonraw.ARRAY:
            op.rows = bsonraw.count(reply, batch[2])
        id_el = cursor.get("id")
        cursor_id = number(reply, id_el)
        ns_el = cursor.get("ns")
        if ns_el is not None and ns_el[0] == bsonraw.STRING:
            # The tenant's namespace for the upstream's, by the raw value: a connection sees
            # the same few namespaces over and over (nothing decoded or encoded per reply).
            raw_ns = reply[ns_el[2]:ns_el[3]]
            hit = self._ns_values.get(raw_ns)
            if hit is None:
                hit = self._map_ns_value(bsonraw.read_string(reply, ns_el[2]))
                if len(self._ns_values) < 256:
                    self._ns_values[raw_ns] = hit
            ns, mapped = hit
        else:
            ns, mapped = "", None
        backend = req.backend
        assert backend is not None and self.session is not None
        if req.name == "getMore":
            if cursor_id == 0:
                backend.cursors.remove(req.cursor_id)
        elif cursor_id:
            backend.cursors.add(cursor_id, self.session.tenant_slug or "", ns)
        if req.name == "listCollections" and op.rows:
            return self._filter_collections(op, reply, s, e)
        if mapped is None or ns_el is None:
            return [memoryview(reply)[s:e]], e - s
        return bsonraw.splice(reply, s, e, [(ns_el[2], ns_el[3], mapped)], containers=(cstart,))

    def _map_ns_value(self, ns: str) -> tuple[str, bytes | None]:
        """An upstream namespace and the BSON string value of the tenant's (None: not one of
        this tenant's databases, left as it is)."""
        if not ns:
            return ns, None
        db, dot, rest = ns.partition(".")
        mine = self.unmap.get(db)
        if mine is None:
            return ns, None
        return ns, string_value(f"{mine}{dot}{rest}")

    def _filter_collections(self, op: MongoOperation, reply: bytes, s: int,
                            e: int) -> tuple[list[Any], int]:
        from ogelkit_mongodb.backend import MARKER
        doc = bson.decode(reply[s:e], DECODE_OPTIONS)
        cursor = doc["cursor"]
        batch = [c for c in cursor.get("firstBatch", []) if c.get("name") != MARKER]
        cursor["firstBatch"] = batch
        op.rows = len(batch)
        body = bson.encode(self._unmap_deep(doc))
        return [body], len(body)

    def _unmap_deep(self, value: Any) -> Any:
        """Upstream database names back to the tenant's, in every string (errmsg included)."""
        if isinstance(value, str):
            for up, mine in self.unmap.items():
                if up and up in value:
                    value = value.replace(up, mine)
            return value
        if isinstance(value, dict):
            return {k: self._unmap_deep(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unmap_deep(v) for v in value]
        return value

