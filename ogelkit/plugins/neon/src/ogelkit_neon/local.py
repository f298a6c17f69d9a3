"""The ``local`` driver: one small PostgreSQL 15 cluster (a *compute*) per branch.

Layout under ``data_dir``::

    .admin                    superuser password of every compute (0600, gateway user)
    .template/pgdata          initdb'ed once, never started; root branches are copies of it
    <tenant>/<name>/pgdata    the branch's data directory (owned by os_user, 0700)
    <tenant>/<name>/postgres.log
    <tenant>/<name>/branch.json   role, password, database, parent (0600, gateway user)
    <tenant>/<name>/.lock     flock held while a process starts, stops or copies the branch

A compute listens on 127.0.0.1 only (no Unix socket), on a port of ``port_range`` picked at
every start. Sleep is ``pg_ctl stop -m fast``; wake is ``pg_ctl start`` plus a probe
(``SELECT 1``) retried every few milliseconds, so a wake costs what PostgreSQL's startup
costs. A compute found dead with its ``postmaster.pid`` left behind crashed: it is started
again (PostgreSQL runs crash recovery) and counted. State lives on disk, so a gateway that
restarts adopts the computes that are still running; another process (the CLI) sees the
same branches.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import random
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Tier
    from ogelkit_neon.backend import NeonBackend
    from ogelkit_neon.options import LocalOptions

log = logging.getLogger("ogelkit.neon")

ADMIN_USER = "o7s_admin"
HOST = "127.0.0.1"


class LocalError(Exception):
    """A compute could not be created, started, stopped or copied."""

    def __init__(self, message: str, sqlstate: str = "08006"):
        super().__init__(message)
        self.sqlstate = sqlstate


class Compute:
    """What this process knows about one branch's postmaster."""

    def __init__(self, key: str, directory: Path):
        self.key = key  # "<tenant>/<name>"
        self.dir = directory
        self.pgdata = directory / "pgdata"
        self.port: int | None = None
        self.pid: int | None = None
        self._running_since: float | None = None  # monotonic; None: not running
        self._run_seconds = 0.0  # ran, not yet taken by take_run_seconds()
        self.started_here = False
        self.lock = asyncio.Lock()
        self.last_used = 0.0
        self.db: DatabaseRecord | None = None
        self.cold_starts = 0
        self.crashes = 0
        self.last_start_seconds: float | None = None

    @property
    def running(self) -> bool:
        return self._running_since is not None

    @running.setter
    def running(self, value: bool) -> None:
        # Every change of the flag goes through here, so the compute's running time is
        # exact to the moment this process started (or adopted) and stopped it.
        now = time.monotonic()
        if value and self._running_since is None:
            self._running_since = now
        elif not value and self._running_since is not None:
            self._run_seconds += now - self._running_since
            self._running_since = None

    def take_run_seconds(self) -> float:
        """Seconds this compute ran since the previous call (compute-seconds usage)."""
        seconds, self._run_seconds = self._run_seconds, 0.0
        if self._running_since is not None:
            now = time.monotonic()
            seconds += now - self._running_since
            self._running_since = now
        return seconds

    def stats(self) -> dict[str, Any]:
        return {"running": self.running, "port": self.port, "pid": self.pid,
                "cold_starts": self.cold_starts, "crashes": self.crashes,
                "last_start_seconds": self.last_start_seconds}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return bool(args) and os.path.basename(args[0]) in (b"postgres", b"postmaster") \
        and str(pgdata).encode() in args


def _read_pidfile(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().split("\n")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _drop_to(uid: int, gid: int) -> Any:
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return drop


def _open_lock(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    return os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


class LocalDriver:
    def __init__(self, backend: NeonBackend, options: LocalOptions):
        self.backend = backend
        self.opts = options
        self.root = Path(options.data_dir)
        self.bin = Path(options.pg_bin)
        low, _, high = options.port_range.partition("-")
        self.ports = (int(low), int(high))
        self.computes: dict[str, Compute] = {}
        self.admin_password = ""
        self._room = asyncio.Lock()
        self._template = asyncio.Lock()
        self.crashes = 0
        self.cold_starts = 0
        if os.geteuid() == 0:
            pw = pwd.getpwnam(options.os_user)
            self._ids: tuple[int, int] | None = (pw.pw_uid, pw.pw_gid)
            self._home = pw.pw_dir
        else:
            self._ids = None
            self._home = os.environ.get("HOME", "/")

    # -- process plumbing ------------------------------------------------------------------
    def _chown(self, path: Path) -> None:
        if self._ids is not None:
            os.chown(path, *self._ids)

    async def _run(self, *args: str, limit: float, env: dict[str, str] | None = None,
                   ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        kw: dict[str, Any] = {}
        if self._ids is not None:
            # preexec_fn, not user=/group=: uvloop's subprocess_exec has only the former.
            kw = {"preexec_fn": _drop_to(*self._ids)}
        full_env = {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C", "HOME": self._home,
                    **(env or {})}
        # Output goes to a file, not a pipe: a postmaster that pg_ctl starts inherits the
        # descriptor, and a pipe would then never reach EOF.
        with tempfile.TemporaryFile() as out_file:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=out_file,
                stderr=asyncio.subprocess.STDOUT, cwd="/", env=full_env, **kw)
            try:
                await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise LocalError(f"{os.path.basename(args[0])} timed out after "
                                 f"{limit:g}s") from None
            out_file.seek(0)
            text = out_file.read()[-4096:].decode(errors="replace")
        if proc.returncode not in ok:
            raise LocalError(f"{os.path.basename(args[0])} failed ({proc.returncode}): "
                             f"{text.strip()[-600:]}")
        return proc.returncode or 0, text

    @contextlib.asynccontextmanager
    async def _flock(self, directory: Path) -> AsyncIterator[None]:
        """Exclusive lock on a branch across processes (gateway, CLI)."""
        fd = _open_lock(directory)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- open / close ----------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._prepare_root)
        for directory in await asyncio.to_thread(self._branch_dirs):
            c = self._compute_for_dir(directory)
            lines = _read_pidfile(c.pgdata)
            if lines and len(lines) > 3 and lines[0].isdigit() and _pid_alive(int(lines[0])) \
                    and _is_postmaster_of(int(lines[0]), c.pgdata):
                c.pid, c.port, c.running = int(lines[0]), int(lines[3]), True
                c.last_used = time.monotonic()
                log.info("adopted a running compute", extra={"branch": c.key, "port": c.port})

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if self._ids is not None:
            probe = os.access(self.root, os.X_OK)
            parent = self.root
            while probe and parent != parent.parent:  # every ancestor must be traversable
                st = parent.stat()
                probe = bool(st.st_mode & 0o001) or st.st_uid == self._ids[0]
                parent = parent.parent
            if not probe:
                raise LocalError(f"the {self.opts.os_user} OS user cannot reach {self.root}; "
                                 "pick a data_dir it can traverse (e.g. under /var/lib)")
        secret = self.root / ".admin"
        if not secret.exists():
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        self.admin_password = secret.read_text().strip()

    def _branch_dirs(self) -> list[Path]:
        out: list[Path] = []
        for tenant in self.root.iterdir():
            if tenant.name.startswith(".") or not tenant.is_dir():
                continue
            out.extend(d for d in tenant.iterdir() if (d / "pgdata").is_dir())
        return out

    async def close(self) -> None:
        mine = [c for c in self.computes.values() if c.running and c.started_here]
        if self.opts.stop_computes_on_close and mine:
            await asyncio.gather(*(self._stop_compute(c) for c in mine), return_exceptions=True)

    # -- lookups ---------------------------------------------------------------------------
    def branch_dir(self, tenant: str, name: str) -> Path:
        for part in (tenant, name):
            if not part or part.startswith(".") or "/" in part or part in ("..",):
                raise LocalError(f"bad branch name {part!r}")
        return self.root / tenant / name

    def _compute_for_dir(self, directory: Path) -> Compute:
        key = f"{directory.parent.name}/{directory.name}"
        c = self.computes.get(key)
        if c is None:
            c = self.computes[key] = Compute(key, directory)
        return c

    def compute(self, db: DatabaseRecord) -> Compute:
        c = self._compute_for_dir(self.branch_dir(db.tenant, db.name))
        c.db = db
        return c

    def running_computes(self) -> int:
        return sum(1 for c in self.computes.values() if c.running)

    @staticmethod
    def _read_meta(directory: Path) -> dict[str, Any] | None:
        try:
            return json.loads((directory / "branch.json").read_text())
        except FileNotFoundError:
            return None

    @staticmethod
    def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
        tmp = directory / "branch.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, directory / "branch.json")

    # -- template and copies ---------------------------------------------------------------
    async def _ensure_template(self) -> Path:
        tpl = self.root / ".template"
        pgdata = tpl / "pgdata"
        async with self._template, self._flock(tpl):
            if (tpl / "ready").exists():
                return pgdata
            if pgdata.exists():
                await asyncio.to_thread(shutil.rmtree, pgdata)
            self._chown(tpl)
            pwfile = tpl / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.admin_password + "\n")
            self._chown(pwfile)
            try:
                await self._run(str(self.bin / "initdb"), "-D", str(pgdata), "-U", ADMIN_USER,
                                f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                                "--locale=C", "--no-instructions", limit=120)
            finally:
                pwfile.unlink(missing_ok=True)
            o = self.opts
            conf = (
                "\n# ogelkit-neon local compute\n"
                f"listen_addresses = '{HOST}'\n"
                "unix_socket_directories = ''\n"
                f"shared_buffers = {max(128, o.shared_buffers // 1024)}kB\n"
                f"max_connections = {o.max_connections}\n"
                "max_wal_senders = 4\n"
                "max_worker_processes = 4\n"
                "min_wal_size = 32MB\n"
                "max_wal_size = 256MB\n"
                "logging_collector = off\n"
                "log_line_prefix = '%m [%p] '\n"
            )
            _append(pgdata / "postgresql.conf", conf)
            _append(tpl / "ready", "1")
            log.info("initialised the neon compute template", extra={"path": str(pgdata)})
        return pgdata

    async def _copy_dir(self, src: Path, dst: Path) -> None:
        await self._run("/bin/cp", "-a", "--reflink=auto", str(src), str(dst), limit=600)
        # A copy never carries a lock file of its source.
        (dst / "postmaster.pid").unlink(missing_ok=True)

    async def _basebackup(self, parent: Compute, dst: Path) -> None:
        assert parent.port is not None
        await self._run(str(self.bin / "pg_basebackup"), "-h", HOST, "-p", str(parent.port),
                        "-U", ADMIN_USER, "-D", str(dst), "-X", "stream", "-c", "fast",
                        "-w", limit=600, env={"PGPASSWORD": self.admin_password})

    async def _new_branch_dir(self, directory: Path) -> None:
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory.parent, 0o755)
        self._chown(directory)
        os.chmod(directory, 0o700)

    # -- the driver interface --------------------------------------------------------------
    async def check(self) -> None:
        if not (self.bin / "pg_ctl").exists():
            raise LocalError(f"no pg_ctl in {self.bin} (set pg_bin)")

    #: Computes listen on loopback only: no TLS.
    tls = None

    def startup_params(self, db: DatabaseRecord) -> dict[str, str]:
        return {}

    async def provision(self, tenant: str, name: str, tier: Tier, role: str, dbname: str,
                        password: str) -> dict[str, Any]:
        return await self.create_root(tenant, name, role, dbname, password)

    async def start(self, db: DatabaseRecord) -> None:
        await self.ensure_running(self.compute(db))

    async def on_tier_change(self, db: DatabaseRecord, tier: Tier) -> None:
        """Nothing to do: the gateway's lifecycle applies the tier's idle time."""

    def describe(self) -> dict[str, Any]:
        return {"running_computes": self.running_computes(), "cold_starts": self.cold_starts,
                "crashes": self.crashes,
                "computes": {k: c.stats() for k, c in self.computes.items()}}

    # -- provisioning ----------------------------------------------------------------------
    async def create_root(self, tenant: str, name: str, role: str, dbname: str,
                          password: str) -> dict[str, Any]:
        """A root branch: a copy of the template with the tenant's role and database."""
        directory = self.branch_dir(tenant, name)
        await self._new_branch_dir(directory)
        async with self._flock(directory):
            meta = self._read_meta(directory)
            if meta is None:
                meta = {"role": role, "password": password, "dbname": dbname, "parent": None,
                        "created_at": time.time(), "ready": False}
                self._write_meta(directory, meta)
            pgdata = directory / "pgdata"
            if not pgdata.exists():
                tpl = await self._ensure_template()
                await self._copy_dir(tpl, pgdata)
        c = self._compute_for_dir(directory)
        if not meta.get("ready"):
            await self.ensure_running(c)
            conn = await self._admin_conn(c)
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1",
                                             meta["role"])
                pw_sql = await conn.fetchval("SELECT quote_literal($1)", meta["password"])
                if exists:
                    await conn.execute(f'ALTER ROLE "{meta["role"]}" LOGIN PASSWORD {pw_sql}')
                else:
                    await conn.execute(f'CREATE ROLE "{meta["role"]}" LOGIN PASSWORD {pw_sql}')
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                           meta["dbname"]):
                    await conn.execute(f'CREATE DATABASE "{meta["dbname"]}" '
                                       f'OWNER "{meta["role"]}"')
                await conn.execute(f'REVOKE CONNECT ON DATABASE "{meta["dbname"]}" FROM PUBLIC')
                await conn.execute(f'GRANT CONNECT ON DATABASE "{meta["dbname"]}" '
                                   f'TO "{meta["role"]}"')
            finally:
                await conn.close()
            meta["ready"] = True
            self._write_meta(directory, meta)
        return self._upstream(tenant, name, meta)

    @staticmethod
    def _upstream(tenant: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
        return {"driver": "local", "branch": f"{tenant}/{name}", "parent": meta.get("parent"),
                "role": meta["role"], "password": meta["password"], "dbname": meta["dbname"]}

    def known_meta(self, tenant: str, name: str) -> dict[str, Any] | None:
        return self._read_meta(self.branch_dir(tenant, name))

    async def branch(self, parent_db: DatabaseRecord, name: str,
                     tier: Tier | None = None) -> dict[str, Any]:
        return (await self.branch_with_method(parent_db, name))[0]

    async def branch_with_method(self, parent_db: DatabaseRecord,
                                 name: str) -> tuple[dict[str, Any], str]:
        """Copy ``parent_db``'s branch into a new branch ``name``; returns (upstream, method)."""
        directory = self.branch_dir(parent_db.tenant, name)
        if (directory / "pgdata").exists() and (self._read_meta(directory) or {}).get("ready"):
            meta = self._read_meta(directory)
            assert meta is not None
            return self._upstream(parent_db.tenant, name, meta), "existing"
        await self._new_branch_dir(directory)
        async with self._flock(directory):
            method = await self._fill_from_parent(parent_db, directory / "pgdata")
            parent_meta = self._read_meta(self.branch_dir(parent_db.tenant, parent_db.name)) or {}
            meta = {"role": parent_db.upstream.get("role", parent_meta.get("role")),
                    "password": parent_db.upstream.get("password", parent_meta.get("password")),
                    "dbname": parent_db.upstream.get("dbname", parent_meta.get("dbname")),
                    "parent": parent_db.name, "created_at": time.time(), "ready": True,
                    "method": method}
            self._write_meta(directory, meta)
        return self._upstream(parent_db.tenant, name, meta), method

    async def _fill_from_parent(self, parent_db: DatabaseRecord, dst: Path) -> str:
        await asyncio.to_thread(shutil.rmtree, dst, True)
        parent = self.compute(parent_db)
        method = self.opts.branch_method
        if method == "auto":
            method = "basebackup" if self._is_running(parent) else "copy"
        if method == "copy" and self._is_running(parent):
            if self.backend.has_clients(parent_db):
                method = "basebackup"  # never cut a parent's clients off for a copy
            else:
                await self.backend.sleep(parent_db)
        if method == "basebackup":
            await self.ensure_running(parent)
            await self._basebackup(parent, dst)
        else:
            async with parent.lock, self._flock(parent.dir):
                if self._is_running(parent):
                    raise LocalError("the parent was started during the copy; retry")
                await self._copy_dir(parent.pgdata, dst)
        return method

    async def reset(self, db: DatabaseRecord, parent_db: DatabaseRecord) -> None:
        await self.reset_with_method(db, parent_db)

    async def reset_with_method(self, db: DatabaseRecord, parent_db: DatabaseRecord) -> str:
        """Replace ``db``'s data with a fresh copy of its parent's."""
        c = self.compute(db)
        was_running = self._is_running(c)
        await self.backend.sleep(db)
        async with self._flock(c.dir):
            old = c.dir / "pgdata.old"
            if old.exists():
                await asyncio.to_thread(shutil.rmtree, old)
            new = c.dir / "pgdata.new"
            method = await self._fill_from_parent(parent_db, new)
            if c.pgdata.exists():
                os.replace(c.pgdata, old)
            os.replace(new, c.pgdata)
            await asyncio.to_thread(shutil.rmtree, old, True)
        if was_running:
            await self.ensure_running(c)
        return method

    async def drop(self, db: DatabaseRecord) -> None:
        directory = self.branch_dir(db.tenant, db.name)
        c = self.computes.get(f"{db.tenant}/{db.name}")
        if c is not None:
            async with c.lock:
                await self._stop_compute(c, mode="immediate")
            self.computes.pop(c.key, None)
        elif (directory / "pgdata").exists():
            await self._stop_compute(self._compute_for_dir(directory), mode="immediate")
            self.computes.pop(f"{db.tenant}/{db.name}", None)
        if directory.exists():
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def storage_bytes(self, db: DatabaseRecord) -> int:
        return await asyncio.to_thread(_disk_bytes, self.branch_dir(db.tenant, db.name) / "pgdata")

    def compute_seconds(self) -> dict[tuple[str, str], float]:
        """Seconds each branch's compute ran since the previous call. A compute that
        crashed counts until the crash is noticed (its next connection or wake)."""
        out: dict[tuple[str, str], float] = {}
        for c in self.computes.values():
            seconds = c.take_run_seconds()
            if seconds > 0:
                tenant, _, name = c.key.partition("/")
                out[(tenant, name)] = seconds
        return out

    async def running(self, db: DatabaseRecord) -> bool:
        """Whether the branch's postmaster runs (at gateway start: computes left running by
        the previous run are adopted; a database whose compute is gone is asleep)."""
        return await asyncio.to_thread(self._is_running, self.compute(db))

    # -- running ---------------------------------------------------------------------------
    def _is_running(self, c: Compute) -> bool:
        """Whether the branch's postmaster runs (started by any process)."""
        if c.running and c.pid is not None and _pid_alive(c.pid):
            return True
        lines = _read_pidfile(c.pgdata)
        if lines and len(lines) > 3 and lines[0].isdigit() and _pid_alive(int(lines[0])) \
                and _is_postmaster_of(int(lines[0]), c.pgdata):
            c.pid, c.port, c.running = int(lines[0]), int(lines[3]), True
            return True
        return False

    async def address(self, db: DatabaseRecord) -> tuple[str, int]:
        """Where ``db``'s compute listens, starting it first when it is not running."""
        c = self.compute(db)
        c.last_used = time.monotonic()
        if c.running and c.pid is not None and c.port is not None and _pid_alive(c.pid):
            return HOST, c.port
        await self.ensure_running(c)
        assert c.port is not None
        return HOST, c.port

    async def ensure_running(self, c: Compute) -> None:
        async with c.lock:
            if c.running and c.pid is not None and _pid_alive(c.pid):
                return
            crashed = c.running  # we had it running and the postmaster is gone
            if crashed:
                self._count_crash(c, "postmaster gone")
            c.running = False
            if not c.pgdata.exists():
                raise LocalError(f"branch {c.key} has no data directory", "3D000")
            await self._make_room(c)
            async with self._flock(c.dir):
                await self._start_compute(c, counted=crashed)

    def _count_crash(self, c: Compute, why: str) -> None:
        c.crashes += 1
        self.crashes += 1
        log.warning("compute crashed; restarting it", extra={"branch": c.key, "reason": why})

    async def _make_room(self, c: Compute) -> None:
        """Over max_running_computes: sleep the least recently used compute without clients."""
        async with self._room:
            while self.running_computes() >= self.opts.max_running_computes:
                idle = [o for o in self.computes.values()
                        if o is not c and o.running and not o.lock.locked()
                        and (o.db is None or not self.backend.has_clients(o.db))]
                if not idle:
                    raise LocalError(f"{self.running_computes()} computes are running, the "
                                     f"most this gateway runs (max_running_computes), and all "
                                     "have clients", "53300")
                victim = min(idle, key=lambda o: o.last_used)
                log.info("sleeping the least recently used compute to make room",
                         extra={"branch": victim.key, "for": c.key})
                if victim.db is not None:
                    await self.backend.sleep(victim.db)
                else:  # never served through a pool (e.g. provisioning left it running)
                    async with victim.lock:
                        await self._stop_compute(victim)

    def _free_port(self, avoid: set[int]) -> int:
        low, high = self.ports
        used = {o.port for o in self.computes.values() if o.running} | avoid
        candidates = [p for p in range(low, high + 1) if p not in used]
        random.shuffle(candidates)
        for port in candidates[:200]:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
                return port
        raise LocalError(f"no free port in port_range {self.opts.port_range}", "53300")

    async def _start_compute(self, c: Compute, counted: bool = False) -> None:
        lines = _read_pidfile(c.pgdata)
        stale: int | None = None
        if lines and lines[0].isdigit():
            pid = int(lines[0])
            if _pid_alive(pid) and _is_postmaster_of(pid, c.pgdata):
                c.pid, c.port, c.running = pid, int(lines[3]), True  # started by another process
                await self._probe(c, time.monotonic() + self.opts.start_timeout)
                return
            stale = pid
            if not counted:
                self._count_crash(c, "stale postmaster.pid")
            # The recorded postmaster is dead, a zombie nobody reaped yet, or its pid now
            # belongs to an unrelated process: PostgreSQL would refuse to start in the
            # last two cases ("lock file already exists"), so the lock file goes. Orphaned
            # backends of the killed postmaster are still caught: the new postmaster
            # refuses to start while they hold the data directory's shared memory, and
            # the start is retried until they have exited.
            (c.pgdata / "postmaster.pid").unlink(missing_ok=True)
        started = time.monotonic()
        deadline = started + self.opts.start_timeout
        log_path = c.dir / "postgres.log"
        tried: set[int] = set()
        while True:
            port = self._free_port(tried)
            tried.add(port)
            c.port = port
            log_start = 0
            with contextlib.suppress(OSError):
                log_start = os.stat(log_path).st_size
            await self._run(str(self.bin / "pg_ctl"), "start", "-D", str(c.pgdata), "-W",
                            "-l", str(log_path), "-o", f"-p {port}",
                            limit=max(1.0, deadline - time.monotonic()))
            why = await self._wait_started(c, deadline, log_path, log_start, stale)
            if why is None:
                break
            if "already in use" in why and len(tried) < 5:
                continue  # lost the port to someone else: another one
            if "shared memory block" in why and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # orphaned backends of a killed postmaster exiting
                continue
            c.running = False
            raise LocalError(f"compute {c.key} did not start: {why}")
        c.running = True
        c.started_here = True
        c.last_used = time.monotonic()
        c.cold_starts += 1
        self.cold_starts += 1
        c.last_start_seconds = time.monotonic() - started
        log.info("compute started", extra={"branch": c.key, "port": c.port,
                                           "seconds": round(c.last_start_seconds, 3)})

    async def _wait_started(self, c: Compute, deadline: float, log_path: Path, log_start: int,
                            stale: int | None) -> str | None:
        """None once the compute answers; else why it will not (from its log). A lock file
        still naming ``stale`` (the crashed postmaster) is one the new one has not yet
        replaced."""
        delay = 0.005
        seen_pid = False
        began = time.monotonic()
        while time.monotonic() < deadline:
            lines = _read_pidfile(c.pgdata)
            if lines and lines[0].isdigit() and int(lines[0]) != stale:
                seen_pid = True
                c.pid = int(lines[0])
                if not _pid_alive(c.pid):
                    return self._log_reason(log_path, log_start) or "the postmaster exited"
                if len(lines) > 7 and lines[7].strip() == "ready":
                    try:
                        await self._probe(c, deadline)
                        return None
                    except LocalError as exc:
                        return str(exc)
            elif seen_pid or time.monotonic() - began > 2.0:
                # The lock file went away again (the postmaster gave up), or never came.
                await asyncio.sleep(0.05)  # let the log be written
                return self._log_reason(log_path, log_start) or "the postmaster exited"
            await asyncio.sleep(delay)
            delay = min(0.05, delay * 1.5)
        return f"not ready after {self.opts.start_timeout:g}s"

    @staticmethod
    def _log_reason(log_path: Path, start: int) -> str | None:
        try:
            with open(log_path, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        bad = [ln for ln in text.splitlines() if ("FATAL" in ln or "PANIC" in ln)
               and "unexpected postmaster exit" not in ln]  # orphans of a killed one
        return bad[-1].split("FATAL:", 1)[-1].strip() if bad else None

    async def _probe(self, c: Compute, deadline: float) -> None:
        """SELECT 1 as the admin user, retried until the compute answers."""
        delay = 0.005
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                conn = await self._admin_conn(c, limit=max(0.5, deadline - time.monotonic()))
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError,
                    TimeoutError) as exc:
                last = exc
                await asyncio.sleep(delay)
                delay = min(0.05, delay * 1.5)
                continue
            try:
                await conn.fetchval("SELECT 1")
                return
            finally:
                await conn.close()
        raise LocalError(f"compute {c.key} did not answer: {last}")

    async def _admin_conn(self, c: Compute, limit: float = 10.0) -> asyncpg.Connection:
        assert c.port is not None
        return await asyncpg.connect(host=HOST, port=c.port, user=ADMIN_USER,
                                     password=self.admin_password, database="postgres",
                                     timeout=limit, statement_cache_size=0,
                                     server_settings={"application_name": "o7s:neon"})

    async def stop(self, db: DatabaseRecord) -> None:
        c = self.compute(db)
        async with c.lock:
            await self._stop_compute(c)

    async def _stop_compute(self, c: Compute, mode: str = "fast") -> None:
        if not self._is_running(c):
            c.running = False
            return
        async with self._flock(c.dir):
            await self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(c.pgdata), "-m", mode,
                            "-w", "-t", str(int(self.opts.stop_timeout)),
                            limit=self.opts.stop_timeout + 5, ok=(0, 3))
        c.running = False
        c.pid = None
        log.info("compute stopped", extra={"branch": c.key})
