import pytest

from ogelkit.testing.services import scratch_pg_database


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def pg_control_url():
    """A throwaway PostgreSQL database on the test server for a control plane."""
    with scratch_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def control_url(request, tmp_path):
    """Both control plane engines: every store test runs on each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/control.db"
    return request.getfixturevalue("pg_control_url")


# -- the line-protocol test plugin (tests/linegate.py) -----------------------------------------
import importlib.util  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent


def load_linegate():
    spec = importlib.util.spec_from_file_location("linegate", HERE / "linegate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def linegate():
    return load_linegate()


@pytest.fixture
def linegate_site(tmp_path):
    """A directory that, on PYTHONPATH, installs linegate as an entry-point plugin."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(HERE / "linegate.py", site / "linegate.py")
    info = site / "ogelkit_test_linegate-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ogelkit-test-linegate\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ogelkit]\nline = linegate\n")
    return site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port, so tests may stop and restart it."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis():
    r = PrivateRedis().start()
    try:
        yield r
    finally:
        r.stop()
