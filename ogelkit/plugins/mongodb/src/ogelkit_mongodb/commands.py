"""Which commands pass the gateway, how, and how aggregation stages are mapped or refused.

An allowlist: a command the gateway does not know is refused (``CommandNotFound``), because
an unknown command might act on the whole server. Tenants run commands on their own databases
only; on ``admin`` only the few commands listed in ``ADMIN`` are answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Reply handling of a forwarded command.
CURSOR = 1  # cursor.firstBatch / nextBatch, cursor.id, cursor.ns
WRITE = 2  # n = documents written (insert, delete)
UPDATE = 3  # nModified + upserted
FIND_AND_MODIFY = 4
COUNT = 5
DISTINCT = 6
GENERIC = 7  # names mapped back everywhere (dbStats.db, collStats.ns, explain ...)

# Commands forwarded to the tenant's own upstream database: name -> reply handling.
FORWARD: dict[str, int] = {
    "find": CURSOR, "aggregate": CURSOR, "getMore": CURSOR, "listCollections": CURSOR,
    "listIndexes": CURSOR,
    "insert": WRITE, "delete": WRITE, "update": UPDATE,
    "findAndModify": FIND_AND_MODIFY, "findandmodify": FIND_AND_MODIFY,
    "count": COUNT, "distinct": DISTINCT,
    "killCursors": GENERIC, "create": GENERIC, "drop": GENERIC, "dropDatabase": GENERIC,
    "createIndexes": GENERIC, "dropIndexes": GENERIC, "deleteIndexes": GENERIC,
    "collMod": GENERIC, "collStats": GENERIC, "dbStats": GENERIC, "dataSize": GENERIC,
    "validate": GENERIC, "explain": GENERIC, "listCommands": GENERIC, "reIndex": GENERIC,
    "convertToCapped": GENERIC, "cloneCollectionAsCapped": GENERIC, "getLastError": GENERIC,
    "listSearchIndexes": CURSOR,
}

# Commands that take maxTimeMS, so the tier's limit is injected (or a larger value capped).
MAX_TIME: frozenset[str] = frozenset(
    {"find", "aggregate", "count", "distinct", "findAndModify", "findandmodify"})

# Commands whose cost is estimated (``explain`` + rules); the rest are never costed.
COSTED: frozenset[str] = frozenset(
    {"find", "aggregate", "count", "distinct", "findAndModify", "findandmodify"})

# Answered by the gateway itself on any database, before and after authentication.
LOCAL_ANY_TIME = frozenset({"hello", "isMaster", "ismaster", "ping", "buildInfo", "buildinfo",
                            "endSessions", "logout", "whatsmyuri", "getLog",
                            "connectionStatus"})

# Accepted on ``admin`` after authentication (besides LOCAL_ANY_TIME).
ADMIN: frozenset[str] = frozenset({"listDatabases", "renameCollection", "commitTransaction",
                                   "abortTransaction", "refreshSessions", "listCommands"})

# Server-level commands: refused with Unauthorized and an explanation.
SERVER_LEVEL: frozenset[str] = frozenset({
    "shutdown", "fsync", "fsyncUnlock", "setParameter", "getParameter", "getCmdLineOpts",
    "hostInfo", "serverStatus", "currentOp", "killOp", "top", "logRotate", "profile",
    "setFeatureCompatibilityVersion", "compact", "killAllSessions", "killAllSessionsByPattern",
    "killSessions", "connPoolStats", "connPoolSync", "applyOps", "eval", "copydb", "clone",
    "cloneCollection", "shardCollection", "enableSharding", "addShard", "removeShard",
    "movePrimary", "balancerStart", "balancerStop", "flushRouterConfig", "lockInfo",
    "createUser", "updateUser", "dropUser", "dropAllUsersFromDatabase", "grantRolesToUser",
    "revokeRolesFromUser", "createRole", "updateRole", "dropRole", "dropAllRolesFromDatabase",
    "grantPrivilegesToRole", "revokePrivilegesFromRole", "grantRolesToRole",
    "revokeRolesFromRole", "usersInfo", "rolesInfo", "invalidateUserCache", "bulkWrite",
    "mapReduce", "getDefaultRWConcern", "setDefaultRWConcern", "rotateCertificates",
    "startSession", "dbHash", "dropConnections", "getClusterParameter", "setClusterParameter",
    "setUserWriteBlockMode", "transitionToDedicatedConfigServer",
})


def is_server_level(name: str) -> bool:
    return name in SERVER_LEVEL or name.startswith(("replSet", "_"))


class Refusal(Exception):
    """A command or stage the gateway will not run: (code, codeName) and the message."""

    def __init__(self, code: tuple[int, str], message: str):
        super().__init__(message)
        self.code = code
        self.message = message


UNAUTHORIZED = (13, "Unauthorized")

# Aggregation stages that read server-wide state.
REFUSED_STAGES = frozenset({"$currentOp", "$listSessions", "$listLocalSessions",
                            "$shardedDataDistribution", "$queryStats", "$listClusterCatalog",
                            "$listSampledQueries", "$listCatalog"})


def map_pipeline(stages: Any, map_db: Callable[[str], str]) -> bool:
    """Map or refuse the stages of ``stages`` in place; True when something changed.

    Stages that name a collection of the same database need nothing ($db is mapped); stages
    that name another database ($out/$merge/$lookup with ``db``) get that database mapped
    (``map_db`` raises ``Refusal`` for a database that is not the tenant's).
    """
    if not isinstance(stages, list):
        return False
    changed = False
    for stage in stages:
        if not isinstance(stage, dict) or len(stage) != 1:
            continue  # the upstream reports the malformed stage
        ((name, spec),) = stage.items()
        if name in REFUSED_STAGES:
            raise Refusal(UNAUTHORIZED, f"aggregation stage {name} reads server-wide state and "
                                        "is not available through the gateway")
        if name == "$changeStream" and isinstance(spec, dict) and (
                spec.get("allChangesForCluster") or spec.get("showSystemEvents")):
            raise Refusal(UNAUTHORIZED, "cluster-wide change streams are not available through "
                                        "the gateway; open the stream on your database or "
                                        "collection")
        if not isinstance(spec, dict):
            continue
        if name in ("$out", "$lookup") or name == "$merge":
            target = spec.get("into") if name == "$merge" else (
                spec.get("from") if name == "$lookup" else spec)
            if isinstance(target, dict) and isinstance(target.get("db"), str):
                target["db"] = map_db(target["db"])
                changed = True
        if name in ("$lookup", "$unionWith"):
            changed |= map_pipeline(spec.get("pipeline"), map_db)
        if name == "$facet":
            for sub in spec.values():
                changed |= map_pipeline(sub, map_db)
    return changed


def bounded_name(name: str) -> str:
    """A metric-safe command name: known names as they are, anything else ``other``."""
    if (name in FORWARD or name in LOCAL_ANY_TIME or name in ADMIN or name in SERVER_LEVEL
            or name in ("saslStart", "saslContinue")):
        return name
    return "other"
