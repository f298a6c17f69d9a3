"""Helpers of the mongodb plugin's tests: gateway configs, clients, upstream cleanup."""

from __future__ import annotations

from typing import Any

import pymongo
import pytest

from ogelkit.testing import minimal_config, services

UPSTREAMS = [pytest.param(services.ferretdb_url(), id="ferretdb")]
if services.mongodb_url():
    UPSTREAMS.append(pytest.param(services.mongodb_url(), id="mongodb"))

PASSWORD = "pw-Ünïcode-42"


def gateway_config(upstream: str, tenants: dict[str, dict[str, Any]], *, layers: str = "",
                   backend_extra: str = "", session: bool = True) -> str:
    """Config text: one mongodb backend on ``upstream``, the session layer, seeded tenants
    (``{slug: {"tier": ..., "databases": [...]}}``)."""
    text = minimal_config()
    text = text.replace('http = 0\n', 'http = 0\nmongodb = 0\n', 1)
    text += f'[backends.mongo]\ntype = "mongodb"\nurl = "{upstream}"\n{backend_extra}\n'
    text += ('[[layers]]\ntype = "session"\n\n' if session else "") + layers
    for slug, spec in tenants.items():
        text += f'[tenants.{slug}]\ntier = "{spec.get("tier", "free")}"\npassword = "{PASSWORD}"\n'
        for db in spec.get("databases", ["main"]):
            text += f'[tenants.{slug}.databases.{db}]\nbackend = "mongo"\n'
    return text


def upstream_client(upstream: str) -> pymongo.MongoClient:
    return pymongo.MongoClient(upstream, serverSelectionTimeoutMS=5000)


def drop_upstream(upstream: str, marker: str) -> None:
    """Drop every upstream database whose name contains ``marker`` (what a test created)."""
    with upstream_client(upstream) as client:
        for name in client.list_database_names():
            if marker in name:
                client.drop_database(name)


class Gateway:
    """A running gateway plus what the tests need to reach it."""

    def __init__(self, running: Any, upstream: str, tenants: dict[str, Any]):
        self.running = running
        self.upstream = upstream
        self.tenants = tenants
        self.port = running.port("mongodb")
        self.clients: list[Any] = []

    @property
    def context(self) -> Any:
        return self.running.context

    def url(self, slug: str, password: str = PASSWORD, **params: Any) -> str:
        from urllib.parse import quote
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return (f"mongodb://{quote(slug)}:{quote(password)}@127.0.0.1:{self.port}/"
                + (f"?{query}" if query else ""))

    def client(self, slug: str, password: str = PASSWORD, **kw: Any) -> pymongo.MongoClient:
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        kw.setdefault("connectTimeoutMS", 5000)
        client = pymongo.MongoClient(self.url(slug, password), **kw)
        self.clients.append(client)
        return client

    def async_client(self, slug: str, password: str = PASSWORD, **kw: Any) -> Any:
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        client = pymongo.AsyncMongoClient(self.url(slug, password), **kw)
        return client

    def upstream_db(self, slug: str, db: str = "main") -> str:
        return f"t_{slug}__{db}"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferretdb_binary() -> str:
    """The FerretDB that scripts/services.sh builds into the cache directory."""
    import os
    from pathlib import Path
    cache = Path(os.environ.get("OGELKIT_CACHE_DIR") or Path.home() / ".cache" / "ogelkit")
    path = cache / "bin" / "ferretdb"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/services.sh up first")
    return str(path)


class PrivateFerretDB:
    """A FerretDB process of our own (SQLite in a temp dir, free port), for tests that kill it."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="ogelkit-ferret-")
        self.port = free_port()
        self.proc: Any = None
        self.auth = auth  # (user, password): FerretDB's own SCRAM users

    @property
    def url(self) -> str:
        if self.auth:
            return f"mongodb://{self.auth[0]}:{self.auth[1]}@127.0.0.1:{self.port}/"
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> PrivateFerretDB:
        import os
        import subprocess
        import time
        os.makedirs(f"{self.dir}/data", exist_ok=True)
        self.proc = subprocess.Popen(
            [ferretdb_binary(), "--handler=sqlite", f"--sqlite-url=file:{self.dir}/data/",
             f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=-", f"--state-dir={self.dir}",
             "--telemetry=disable", "--log-level=warn",
             *([] if not self.auth else ["--test-enable-new-auth", f"--setup-username={self.auth[0]}",
                                         f"--setup-password={self.auth[1]}",
                                         "--setup-database=admin"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DO_NOT_TRACK": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=300) as c:
                    c.admin.command("ping")
                return self
            except pymongo.errors.PyMongoError:
                if self.proc.poll() is not None:
                    raise RuntimeError("private FerretDB exited") from None
                time.sleep(0.1)
        raise TimeoutError("private FerretDB did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        import shutil
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
