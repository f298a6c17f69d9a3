"""Test helpers for gateways with Neon-local databases (the plugin's own tests, the layer
acceptance tests, third-party layers that want to run against Neon too).

Computes are real PostgreSQL 15 clusters under a throw-away directory in /var/tmp: the
``postgres`` OS user, which runs them when the tests run as root, must reach it (pytest's
``tmp_path`` is root-only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_BIN = "/usr/lib/postgresql/15/bin"


def new_data_dir() -> str:
    """A fresh ``data_dir`` for the local driver, reachable by the computes' OS user."""
    path = tempfile.mkdtemp(prefix="ogelkit-neon-test-", dir="/var/tmp")
    os.chmod(path, 0o755)
    return path


def stop_all(data_dir: str) -> None:
    """Stop every compute left under ``data_dir`` (whatever a failing test left behind)."""
    for pid_file in Path(data_dir).glob("*/*/pgdata/postmaster.pid"):
        pgdata = pid_file.parent
        cmd = [f"{PG_BIN}/pg_ctl", "stop", "-D", str(pgdata), "-m", "immediate"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, capture_output=True, timeout=30, cwd="/")


def live_postmasters(data_dir: str) -> int:
    """Computes running under ``data_dir`` (a live postmaster named by a lock file)."""
    from ogelkit_neon.local import _pid_alive, _read_pidfile
    alive = 0
    for pid_file in Path(data_dir).glob("*/*/pgdata/postmaster.pid"):
        lines = _read_pidfile(pid_file.parent)
        if lines and lines[0].isdigit() and _pid_alive(int(lines[0])):
            alive += 1
    return alive


def remove_data_dir(data_dir: str) -> None:
    """Stop what runs under ``data_dir``, then delete it."""
    stop_all(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


def neon_backend_toml(data_dir: str, *, name: str = "neon", extra: str = "",
                      local: str = "") -> str:
    """The ``[backends.<name>]`` table of a local-driver Neon backend in ``data_dir``."""
    return (f'\n[backends.{name}]\ntype = "neon"\n{extra}\n'
            f'[backends.{name}.local]\ndata_dir = "{data_dir}"\nport_range = "56100-56999"\n'
            f'{local}\n')


__all__ = ["PG_BIN", "live_postmasters", "neon_backend_toml", "new_data_dir",
           "remove_data_dir", "stop_all"]
