"""Studio's collection browser: ``listCollections``, ``find``, ``count`` and ``distinct``
on one tenant database, as the backend's pool sends them upstream (the core's console
session admitted the command through the layers already)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bson import json_util

if TYPE_CHECKING:
    from ogelkit_mongodb.backend import MongoBackend

COMMANDS = ("listCollections", "find", "count", "distinct")
MAX_DOCS = 100


def parse(document: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(document, dict) or not document:
        raise ValueError('a MongoDB console request is {"document": {"find": "coll", ...}}')
    name = next(iter(document))
    if name not in COMMANDS:
        raise ValueError(f"the collection browser runs {', '.join(COMMANDS)}; not {name}")
    if name != "listCollections" and not isinstance(document[name], str):
        raise ValueError(f"{name} names a collection")
    doc = {k: v for k, v in document.items() if not k.startswith("$")}
    if name == "find":
        limit = doc.get("limit", MAX_DOCS)
        doc["limit"] = max(1, min(MAX_DOCS, int(limit) if isinstance(limit, int) else MAX_DOCS))
        doc["singleBatch"] = True
    return name, doc


def _plain(value: Any) -> Any:
    """BSON values as JSON (ObjectId, dates ... in relaxed Extended JSON)."""
    return json.loads(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))


async def run(backend: MongoBackend, upstream_db: str, document: Any) -> dict[str, Any]:
    name, doc = parse(document)
    if name == "listCollections":
        doc = {"listCollections": 1, "nameOnly": True}
    reply = await backend.pool.command(upstream_db, doc)
    if not reply.get("ok"):
        raise ValueError(f"{reply.get('codeName') or 'error'}: {reply.get('errmsg')}")
    if name == "listCollections":
        names = sorted(c["name"] for c in reply["cursor"]["firstBatch"]
                       if not str(c.get("name", "")).startswith("system."))
        return {"columns": ["name"], "rows": [[n] for n in names], "command": name}
    if name == "find":
        docs = reply["cursor"]["firstBatch"]
        return {"result": _plain(docs), "command": f"find {len(docs)}"}
    body = {k: v for k, v in reply.items() if k not in ("ok", "$clusterTime", "operationTime")}
    return {"result": _plain(body), "command": name}
