"""Connecting: to the embedded server (embedded.py) or a real one, through a pool with
pgvector registered, retrying only when the connection itself broke."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import REDACTED, Settings
from ..errors import DatabaseError, ImageSearchError, one_line
from .embedded import shared_buffers_mb, start_embedded_server

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 10
RETRY_ATTEMPTS = 6
RETRY_DELAY_S = 1.0
# The page answers 4 requests at once (its queue's concurrency) and a duplicates search holds
# up to 4 connections at once (duplicates.SEARCH_PARTS); two more for an index run's writer.
POOL_MAX_SIZE = 4 * 4 + 2
# maintenance_work_mem for building the HNSW index on a server of one's own.
SERVER_BUILD_MEMORY_MB = 512
# SQLSTATE classes and codes that mean the connection is gone, not that the statement failed:
# 08 connection exception; 57P01-57P03 the server shut down or is starting.
BROKEN_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
# Taken in the same transactions by every process that creates or changes schema objects.
SCHEMA_LOCK = "image_search_meta"


def describe_location(settings: Settings) -> str:
    """Where the database is, for people: never with the password."""
    if settings.embedded_database:
        return f"embedded PostgreSQL in {(settings.data_directory / 'pgdata').resolve()}"
    return (
        f"postgresql://{settings.postgres_user}:{REDACTED}@{settings.postgres_host}:"
        f"{settings.postgres_port}/{settings.postgres_database}"
    )


def redact(text: str, settings: Settings) -> str:
    if settings.postgres_password:
        text = text.replace(settings.postgres_password, REDACTED)
    return text


def is_broken_connection(error: BaseException, conn: psycopg.Connection | None = None) -> bool:
    """True when the connection is gone (server restarted, network cut), so that running
    the same statement again on a new connection can succeed. A full disk, a cancelled
    statement or a constraint violation are answers from a live server: not retried. A pool
    timeout counts when the pool was not simply busy (see Database.run): then it could not
    connect."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    if conn is not None and (conn.broken or conn.closed):
        return True
    state = error.sqlstate
    return state is None or state.startswith(BROKEN_CONNECTION_STATES)


# ---------------------------------------------------------------- the database


class Database:
    """One PostgreSQL database (embedded or a server) behind a small pool of autocommit
    connections with pgvector registered. Open it once per process and share it: the
    index run, the searcher and every request of the page borrow from it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ConnectionPool | None = None

    def __enter__(self) -> Database:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._pool is not None:
            return
        uri = self._conninfo()
        self._enable_pgvector(uri)
        pool = ConnectionPool(
            uri,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            min_size=1,
            max_size=POOL_MAX_SIZE,
            configure=register_vector,
            name="image-search",
            open=False,
        )
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _conninfo(self) -> str:
        settings = self.settings
        if not settings.embedded_database:
            return psycopg.conninfo.make_conninfo(
                host=settings.postgres_host,
                port=settings.postgres_port,
                user=settings.postgres_user,
                password=settings.postgres_password or None,
                dbname=settings.postgres_database,
            )
        try:
            return start_embedded_server(settings.data_directory, settings.postgres_database)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot create database '{settings.postgres_database}' in the embedded "
                f"PostgreSQL: {self._reason(exc)}. Check the postgres-database key"
            ) from None
        except Exception as exc:  # the wheel raises assorted errors; one line says which
            raise ImageSearchError(
                f"cannot start the embedded PostgreSQL in {settings.data_directory / 'pgdata'}: "
                f"{one_line(exc)}. Check that the data-directory is writable, or set "
                "postgres-host"
            ) from exc

    def _enable_pgvector(self, uri: str) -> None:
        """Connect once directly, so that a refused connection is one clear line, and create
        the extension before the pool's connections register its type."""
        try:
            conn = psycopg.connect(uri, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to {describe_location(self.settings)}: {self._reason(exc)}. "
                "Check the postgres-* settings and that the server is running "
                "(docker compose up -d)"
            ) from None
        with conn:
            try:
                with conn.transaction():  # concurrent CREATE EXTENSION calls can race
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [SCHEMA_LOCK])
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise DatabaseError(
                    "cannot enable the pgvector extension in "
                    f"{describe_location(self.settings)}: {self._reason(exc)}. The server needs "
                    "pgvector installed (the pgvector/pgvector image has it) and a user allowed "
                    "to create the extension"
                ) from None

    def _reason(self, error: BaseException) -> str:
        return redact(one_line(error), self.settings)

    @contextmanager
    def connection(self, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[psycopg.Connection]:
        """Borrow a connection (for a test, a benchmark or a one-off look-up)."""
        self.open()
        assert self._pool is not None
        with self._pool.connection(timeout=timeout) as conn:
            yield conn

    def index_build_memory(self) -> str:
        """maintenance_work_mem for building the HNSW index after a bulk load. pgvector
        builds in memory while the graph fits and much more slowly on disk after: at
        1,000,000 rows of 1024-d halfvec the graph needs about 2.7 GB. The embedded server
        gets as much as its cache (a quarter of memory, up to 4 GB); a server of one's own,
        whose memory this computer cannot see, a modest 512 MB."""
        if self.settings.embedded_database:
            return f"{max(SERVER_BUILD_MEMORY_MB, shared_buffers_mb())}MB"
        return f"{SERVER_BUILD_MEMORY_MB}MB"

    def run(self, action: Callable[[psycopg.Connection], T]) -> T:
        """Run `action` on a borrowed connection. An idempotent action is run again on a
        fresh connection when the old one broke (server restarted) or when it lost a deadlock
        with a concurrent run; anything else is one readable DatabaseError."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            conn = None
            try:
                with self.connection(CONNECT_TIMEOUT_S) as conn:
                    return action(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRY_ATTEMPTS:
                    raise DatabaseError("gave up after repeated deadlocks; run again") from None
            except (psycopg.Error, PoolTimeout) as exc:
                if isinstance(exc, PoolTimeout) and self._all_in_use():
                    raise DatabaseError(
                        f"the database is busy: all {POOL_MAX_SIZE} connections of this "
                        f"process stayed in use for {CONNECT_TIMEOUT_S} s; try again"
                    ) from None
                if not is_broken_connection(exc, conn):
                    raise DatabaseError(describe_database_error(exc, self.settings)) from None
                if attempt == RETRY_ATTEMPTS:
                    raise DatabaseError(
                        f"lost the connection to the database ({self._reason(exc)}). Everything "
                        "stored before is kept: run the command again to finish"
                    ) from None
                log.warning("lost the database connection; reconnecting (%d)", attempt)
                # A server that is restarting needs a moment, one that is down longer: wait
                # twice as long at each attempt (1, 2, 4, 8, 16 s).
                time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _all_in_use(self) -> bool:
        """Whether every connection the pool may hold is open and lent out: a pool timeout
        then means a busy process, not a lost server."""
        if self._pool is None:
            return False
        stats = self._pool.get_stats()
        return stats["pool_size"] >= stats["pool_max"] and stats["pool_available"] == 0


def describe_database_error(error: BaseException, settings: Settings) -> str:
    """A database failure as one sentence that says what it is."""
    reason = redact(one_line(error), settings)
    if isinstance(error, psycopg.errors.DiskFull):
        return (
            f"the database server's disk is full ({reason}). Free some space and run the "
            "command again: everything stored before is kept"
        )
    if isinstance(error, psycopg.errors.QueryCanceled):
        return f"the database cancelled the statement ({reason})"
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return f"the database user lacks a permission ({reason})"
    return f"database error: {reason}"
