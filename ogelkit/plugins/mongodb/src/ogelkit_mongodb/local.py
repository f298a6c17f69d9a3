"""Commands the gateway answers itself: ``ping``, ``buildInfo``, ``whatsmyuri``,
``connectionStatus``, ``listDatabases`` (the tenant's databases only, under its names)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from ogelkit_mongodb import errors
from ogelkit_mongodb.commands import Refusal

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, GatewayContext, Session
    from ogelkit_mongodb.backend import MongoBackend
    from ogelkit_mongodb.listener import MongoFrontDoor
    from ogelkit_mongodb.request import Request


class LocalCommands:
    """The locally answered commands of ``MongoConnection`` (a mixin)."""

    door: MongoFrontDoor
    ctx: GatewayContext
    peer: str
    session: Session | None
    authenticated: bool
    auth_db: str
    databases: dict[str, DatabaseRecord]

    def _plan_list_databases(self, req: Request, doc: dict[str, Any]) -> None:
        req.run = lambda: self._list_databases(doc)

    async def _list_databases(self, doc: dict[str, Any]) -> dict[str, Any]:
        sizes: dict[str, dict[str, Any]] = {}
        by_backend: dict[str, list[str]] = {}
        for record in self.databases.values():
            by_backend.setdefault(record.backend, []).append(record.upstream["database"])
        for bid, names in by_backend.items():
            backend = cast("MongoBackend", self.ctx.backends[bid])
            reply = await backend.pool.command("admin", {"listDatabases": 1})
            if not reply.get("ok"):
                raise Refusal((int(reply.get("code", 1)), str(reply.get("codeName", "Error"))),
                              str(reply.get("errmsg", "listDatabases failed")))
            wanted = set(names)
            for item in reply.get("databases", []):
                if item.get("name") in wanted:
                    sizes[item["name"]] = item
        out: list[dict[str, Any]] = []
        for name, record in sorted(self.databases.items()):
            up = sizes.get(record.upstream["database"], {})
            size = int(up.get("sizeOnDisk", 0))
            out.append({"name": name, "sizeOnDisk": size, "empty": bool(up.get("empty", size == 0))})
        flt = doc.get("filter")
        if isinstance(flt, dict) and flt:
            out = [d for d in out if _matches(d, flt)]
        if doc.get("nameOnly"):
            return {"databases": [{"name": d["name"]} for d in out], "ok": 1.0}
        return {"databases": out, "totalSize": sum(d["sizeOnDisk"] for d in out),
                "totalSizeMb": sum(d["sizeOnDisk"] for d in out) // (1024 * 1024), "ok": 1.0}

    def _local(self, name: str, db: str) -> dict[str, Any]:
        if name in ("ping", "endSessions", "logout"):
            return {"ok": 1.0}
        if name in ("buildInfo", "buildinfo"):
            return self._build_info()
        if name == "whatsmyuri":
            return {"you": self.peer, "ok": 1.0}
        if name == "getLog":
            return {"totalLinesWritten": 0, "log": [], "ok": 1.0}
        if name == "connectionStatus":
            users, roles = [], []
            if self.authenticated and self.session is not None:
                users = [{"user": self.session.user, "db": self.auth_db}]
                roles = [{"role": "dbOwner", "db": n} for n in sorted(self.databases)]
            return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": roles},
                    "ok": 1.0}
        return errors.error_doc(errors.COMMAND_NOT_FOUND, f"no such command: '{name}'")

    def _build_info(self) -> dict[str, Any]:
        info = cast("MongoBackend", self.door.backends[0]).build_info or {}
        version = str(info.get("version", "7.0.0"))
        parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]]
        limits = self.door.server_limits()
        return {"version": version, "versionArray": [*parts, 0][:4], "gitVersion": "ogelkit",
                "modules": [], "allocator": "system", "javascriptEngine": "none",
                "sysInfo": "deprecated", "bits": 64, "debug": False,
                "maxBsonObjectSize": limits["maxBsonObjectSize"], "storageEngines": [],
                "ok": 1.0}

    # -- replies -------------------------------------------------------------------------------


def _matches(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    """A small matcher for listDatabases filters (equality, $eq/$ne/$in/$nin/$regex)."""
    for key, cond in flt.items():
        value = doc.get(key)
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for opname, arg in cond.items():
                if opname == "$eq" and value != arg:
                    return False
                if opname == "$ne" and value == arg:
                    return False
                if opname in ("$in", "$nin") and not isinstance(arg, list):
                    raise Refusal(errors.BAD_VALUE, f"{opname} needs an array")
                if opname == "$in" and value not in arg:
                    return False
                if opname == "$nin" and value in arg:
                    return False
                if opname == "$regex":
                    pattern = arg.pattern if hasattr(arg, "pattern") else str(arg)
                    try:
                        found = isinstance(value, str) and re.search(pattern, value)
                    except re.error as exc:
                        raise Refusal(errors.BAD_VALUE, f"bad $regex: {exc}") from None
                    if not found:
                        return False
        elif value != cond:
            return False
    return True
