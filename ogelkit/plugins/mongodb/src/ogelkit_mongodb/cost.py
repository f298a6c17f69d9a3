"""Cost estimates for MongoDB commands, in the tier ceiling's units.

``explain`` (verbosity ``queryPlanner``: nothing is executed) tells whether the upstream scans
the whole collection (MongoDB ``COLLSCAN``, FerretDB/SQLite ``SCAN``, FerretDB/PostgreSQL
``Seq Scan``) or uses an index. When ``explain`` is not available or fails, rules decide: no
filter, or a filter without an ``_id`` equality, is a scan. A scan examines every document of
the collection (``collStats`` count, cached ``stats_ttl``); an index lookup about one (or the
``limit``). Estimated documents x ``cost_per_document`` is the cost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ogelkit_mongodb import bsonraw, commands

if TYPE_CHECKING:
    from ogelkit import Operation
    from ogelkit_mongodb.backend import MongoBackend

_SCAN = re.compile(r"COLLSCAN|Seq Scan|detail=SCAN |'SCAN ")
_INDEX = re.compile(r"IXSCAN|IDHACK|EXPRESS|Index Scan|Index Only Scan|SEARCH ")
_DROP = frozenset({"$db", "lsid", "$readPreference", "$clusterTime", "maxTimeMS", "txnNumber",
                   "autocommit", "startTransaction", "readConcern", "writeConcern", "comment",
                   "apiVersion", "apiStrict", "apiDeprecationErrors", "cursor", "batchSize",
                   "singleBatch"})
_VALUES = frozenset({"limit", "skip"})  # part of the cost key by value, not by shape


def shape(value: Any) -> Hashable:
    """The structure of a filter or pipeline with literal values replaced by their type."""
    if isinstance(value, dict):
        return tuple((k, shape(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("[]", *(shape(v) for v in value[:8]))
    return type(value).__name__


def _filter(name: str, doc: dict[str, Any]) -> Any:
    if name == "find":
        return doc.get("filter")
    if name == "aggregate":
        pipeline = doc.get("pipeline") or []
        first = pipeline[0] if pipeline and isinstance(pipeline[0], dict) else {}
        return first.get("$match")
    return doc.get("query")


def _id_lookup(flt: Any) -> bool:
    if not isinstance(flt, dict) or "_id" not in flt:
        return False
    cond = flt["_id"]
    if isinstance(cond, dict) and cond and all(str(k).startswith("$") for k in cond):
        return set(cond) <= {"$eq"}
    return True


class CostEstimator:
    def __init__(self, backend: MongoBackend):
        self.backend = backend
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}
        self.explains = 0
        self.fallbacks = 0

    def key(self, op: Operation) -> Hashable | None:
        req = getattr(op, "request", None)
        if req is None or req.name not in commands.COSTED or not req.upstream_db:
            return None
        index = req.index
        if not index:  # a Request built without its message: decode
            return self._key_decoded(req)
        # Per operation: read from the index of the command's top-level fields built when the
        # message arrived; only the names and types of the other fields are read, nothing is
        # decoded (a filter's literals do not change its shape).
        data = req.data
        el = index.get(req.name)
        if el is None or el[0] != bsonraw.STRING:
            return None
        shape_of = bsonraw.shape
        parts: list[tuple[str, Hashable]] = []
        try:
            for k, (t, _e, v, q) in index.items():
                if k in _DROP or k == req.name:
                    continue
                if k in _VALUES:  # limit, skip: their values
                    value = bsonraw.read_number(data, t, v)
                    parts.append((k, value if value is not None else shape_of(data, t, v, q)))
                else:
                    parts.append((k, shape_of(data, t, v, q)))
            coll = bsonraw.read_string(data, el[2])
        except (bsonraw.BsonError, ValueError, IndexError):
            return None
        return ("mongodb", self.backend.name, req.upstream_db, coll, req.name, tuple(parts))

    def _key_decoded(self, req: Any) -> Hashable | None:
        try:
            doc = req.doc()
        except Exception:
            return None
        coll = doc.get(req.name)
        if not isinstance(coll, str):
            return None
        parts = tuple((k, shape(v) if k not in _VALUES else v)
                      for k, v in doc.items() if k not in _DROP and k != req.name)
        return ("mongodb", self.backend.name, req.upstream_db, coll, req.name, parts)

    async def estimate(self, op: Operation) -> float | None:
        req = getattr(op, "request", None)
        if req is None or req.name not in commands.COSTED:
            return None
        try:
            doc = req.doc()
        except Exception:  # undecodable: not estimated (the upstream answers the command)
            return None
        coll = doc.get(req.name)
        if not isinstance(coll, str):
            return None
        name = "findAndModify" if req.name == "findandmodify" else req.name
        total = await self._count(req.upstream_db, coll)
        scan = await self._explain_scans(req.upstream_db, name, doc)
        if scan is None:
            self.fallbacks += 1
            scan = not _id_lookup(_filter(name, doc))
        limit = doc.get("limit") if name in ("find", "count") else None
        limit = abs(int(limit)) if isinstance(limit, int | float) and limit else None
        flt = _filter(name, doc)
        if scan:
            docs = total
            if limit and not flt and not doc.get("sort"):
                docs = min(total, limit)
        else:
            docs = min(total, limit or 1) if total else 1
        return float(max(docs, 1)) * self.backend.options.cost_per_document

    async def _count(self, db: str, coll: str) -> int:
        now = time.monotonic()
        hit = self._counts.get((db, coll))
        if hit is not None and now - hit[0] < self.backend.options.stats_ttl:
            return hit[1]
        n = 0
        try:
            reply = await self.backend.pool.command(db, {"collStats": coll})
            if reply.get("ok"):
                n = int(reply.get("count", 0))
            else:
                reply = await self.backend.pool.command(db, {"count": coll})
                n = int(reply.get("n", 0)) if reply.get("ok") else 0
        except Exception:
            n = 0
        if len(self._counts) > 10_000:
            self._counts.clear()
        self._counts[(db, coll)] = (now, n)
        return n

    async def _explain_scans(self, db: str, name: str, doc: dict[str, Any]) -> bool | None:
        inner = {k: v for k, v in doc.items() if k not in _DROP or k == "cursor"}
        if name == "aggregate":
            inner.setdefault("cursor", {})
        else:
            inner.pop("cursor", None)
        try:
            reply = await self.backend.pool.command(db, {"explain": inner,
                                                         "verbosity": "queryPlanner"})
        except Exception:
            return None
        if not reply.get("ok"):
            return None
        self.explains += 1
        plan = repr(reply.get("queryPlanner", reply.get("stages", "")))
        if _SCAN.search(plan):
            return True
        if _INDEX.search(plan):
            return False
        return None
