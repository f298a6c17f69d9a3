"""A client command on its way upstream: what the front door decided and what the layers see."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bson

from ogelkit import Operation

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord
    from ogelkit_mongodb.backend import MongoBackend
    from ogelkit_mongodb.upstream import UpstreamConnection, Waiter


class Request:
    """A parsed client command. ``local`` (a reply document) or ``run`` (a coroutine function
    answering it) for commands the gateway answers itself; otherwise ``parts`` is the rewritten
    message for ``backend``."""

    __slots__ = (
        "_doc",
        "backend",
        "body",
        "client_db",
        "cursor_id",
        "data",
        "extra_not_found",
        "flags",
        "index",
        "local",
        "mode",
        "name",
        "parts",
        "record",
        "request_id",
        "run",
        "upstream_db",
    )

    def __init__(self, name: str, request_id: int, client_db: str):
        self.name = name
        self.request_id = request_id
        self.client_db = client_db
        self.mode = 0
        self.local: dict[str, Any] | None = None
        self.run: Any = None
        self.backend: MongoBackend | None = None
        self.record: DatabaseRecord | None = None
        self.upstream_db = ""
        self.parts: list[Any] = []
        self.body: bytes = b""  # the client's command document (raw, unmapped)
        # The client's whole message and the index of its command document's top-level
        # fields (offsets into ``data``), built once per message: the planner and the cost
        # key read fields from it without decoding the document.
        self.data: bytes = b""
        self.index: dict[str, tuple[int, int, int, int]] = {}
        self.flags = 0
        self.cursor_id = 0  # getMore: the cursor it continues
        self.extra_not_found: list[int] = []  # killCursors: ids of other tenants (never sent)
        self._doc: dict[str, Any] | None = None

    def doc(self) -> dict[str, Any]:
        """The command document decoded (lazily: only the cost estimate needs it)."""
        if self._doc is None:
            self._doc = bson.decode(self.body)
        return self._doc


class MongoOperation(Operation):
    """``Operation`` plus the parsed command, for the backend's cost estimate."""

    __slots__ = ("request", "upstream")

    def __init__(self, session: Any, name: str, size: int, request: Request):
        super().__init__(session, "command", name, None, size)
        self.request = request
        self.upstream: UpstreamConnection | Waiter | None = None
