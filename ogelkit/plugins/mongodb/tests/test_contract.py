"""The core's FrontDoorContract for the MongoDB door, with pymongo as the client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import ClassVar

import pymongo
import pytest
from mongo_support import drop_upstream
from ogelkit_mongodb import errors

from ogelkit import Reject
from ogelkit.testing import services
from ogelkit.testing.frontdoor import FrontDoorContract

MARKER = f"c{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", autouse=True)
def _drop_contract_databases() -> Iterator[None]:
    yield
    drop_upstream(services.ferretdb_url(), MARKER)


def _client(port: int, user: str, password: str, database: str,
            **kw: object) -> pymongo.MongoClient:
    return pymongo.MongoClient(host="127.0.0.1", port=port, username=user, password=password,
                               authSource=database, authMechanism="SCRAM-SHA-256",
                               serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, **kw)


class TestMongoDoorContract(FrontDoorContract):
    backend: ClassVar[str] = (f'type = "mongodb"\nurl = "{services.ferretdb_url()}"\n'
                              f'database_format = "t_{MARKER}_{{tenant}}__{{db}}"')
    protocol: ClassVar[str] = "mongodb"
    shutdown_marker: ClassVar[str] = "ShutdownInProgress"

    @staticmethod
    def encode_reject(reject: Reject) -> str:
        return errors.encode_reject(reject)

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        with _client(port, user, password, database) as client:
            try:
                client[database].c.find_one()
            except pymongo.errors.PyMongoError as exc:
                return str(exc)
        return "ok"

    def hold_idle(self, port: int, user: str, password: str,
                  database: str) -> Callable[[], str]:
        client = _client(port, user, password, database, maxPoolSize=1, retryReads=False,
                         retryWrites=False)
        client[database].c.find_one()

        def told() -> str:
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        client[database].command("ping")
                    except pymongo.errors.PyMongoError as exc:
                        return str(exc)
                    time.sleep(0.02)
                return "nothing: the connection was never told"
            finally:
                client.close()

        return told
