"""The tables' definitions: their names, the numbered migrations of a table of image vectors,
the tables all of them share (meta, failures) and the HNSW index. Each runs inside a
transaction that schema.py opens and locks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import psycopg
from psycopg import sql

from ..config import RESERVED_TABLE_PREFIX
from ..vectors import VectorSpec

META_TABLE = f"{RESERVED_TABLE_PREFIX}meta"
# Files that could not be indexed, per table, by path, size and mtime and what made them fail
# (the cause: the settings and decoders that decide decoding): an unchanged broken file is not
# read again, so a run with nothing new never loads the model, until its cause changes.
FAILURES_TABLE = f"{RESERVED_TABLE_PREFIX}failures"
SCHEMA_VERSION = 4
# PostgreSQL cuts identifiers longer than this many bytes.
MAX_IDENTIFIER = 63
# The indexes of a table, by role. Their names are derived from the table's (see index_name).
INDEX_ROLES = ("pkey", "path_hash_key", "content_hash", "embedding_hnsw")


def index_name(table: str, role: str) -> str:
    """`{table}_{role}`, or, where PostgreSQL would cut that, a shortened table name plus a
    hash of the whole one: a cut name could equal the table's own or another table's."""
    name = f"{table}_{role}"
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(role) - len(digest) - 2
    return f"{table[:keep]}_{digest}_{role}"


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


META = ident(META_TABLE)
FAILURES = ident(FAILURES_TABLE)


def existing_tables(conn: psycopg.Connection) -> list[str]:
    """The tables of image vectors the meta table names that still exist."""
    query = sql.SQL(
        "SELECT table_name FROM {meta} WHERE to_regclass(quote_ident(table_name)) IS NOT NULL "
        "ORDER BY table_name"
    ).format(meta=META)
    return [name for (name,) in conn.execute(query)]


# ---------------------------------------------------------------- migrations


def _migration_1(conn: psycopg.Connection, table: str, spec: VectorSpec) -> None:
    """The first schema: one row per source file, plus the HNSW index for cosine search."""
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {table} (
                id bigserial CONSTRAINT {pkey} PRIMARY KEY,
                registered_at timestamptz NOT NULL DEFAULT now(),
                file_path text NOT NULL,
                file_name text NOT NULL,
                path_hash text NOT NULL CONSTRAINT {path_hash_key} UNIQUE,
                content_hash text NOT NULL,
                file_size bigint NOT NULL,
                file_mtime_ns bigint NOT NULL,
                processed_path text NOT NULL,
                model_name text NOT NULL,
                embedding {kind}({dimension}) NOT NULL
            )
            """
        ).format(
            table=ident(table),
            pkey=ident(index_name(table, "pkey")),
            path_hash_key=ident(index_name(table, "path_hash_key")),
            kind=sql.SQL(spec.kind),
            dimension=sql.Literal(spec.dimension),
        )
    )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {table} (content_hash)").format(
            name=ident(index_name(table, "content_hash")), table=ident(table)
        )
    )
    create_vector_index(conn, table, spec.kind)


def _migration_2(conn: psycopg.Connection, table: str, spec: VectorSpec) -> None:
    """The exact bytes of paths that are not valid UTF-8 (text columns cannot hold them),
    and the number of rows kept in the meta table, so that no search has to count."""
    conn.execute(
        sql.SQL("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS file_path_raw bytea").format(
            table=ident(table)
        )
    )
    conn.execute(
        sql.SQL("UPDATE {meta} SET images = (SELECT count(*) FROM {table}) WHERE table_name = %s")
        .format(meta=META, table=ident(table)),
        [table],
    )


def _migration_3(conn: psycopg.Connection, table: str, spec: VectorSpec) -> None:
    """The capture date (EXIF DateTimeOriginal, else the file's mtime), as the wall-clock
    time the photo was taken: no time zone, as EXIF gives none. Rows stored before this
    stay NULL until the next index run reads their headers. No B-tree index on it: date
    filters stay on the HNSW index (an iterative scan), which a filter-first plan would
    leave."""
    conn.execute(
        sql.SQL("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS taken_at timestamp").format(
            table=ident(table)
        )
    )


def _migration_4(conn: psycopg.Connection, table: str, spec: VectorSpec) -> None:
    """When an index run first found a stored file missing (NULL: it is there). A missing
    file's row is left out of every search but kept, vector and all, until it comes back
    or stays missing past the grace period: a share that is not mounted must not cost a
    re-embed. The meta table counts such rows apart from the searchable ones."""
    conn.execute(
        sql.SQL("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS missing_since timestamptz").format(
            table=ident(table)
        )
    )


# MIGRATIONS[n] brings a table from schema version n to n + 1.
MIGRATIONS: list[Callable[[psycopg.Connection, str, VectorSpec], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def create_vector_index(conn: psycopg.Connection, table: str, kind: str) -> None:
    """The HNSW index for cosine search; building it once after a bulk load is far cheaper
    than growing it row by row."""
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw (embedding {opclass})"
        ).format(
            name=ident(index_name(table, "embedding_hnsw")),
            table=ident(table),
            opclass=sql.SQL(f"{kind}_cosine_ops"),
        )
    )


def create_shared_tables(conn: psycopg.Connection) -> None:
    conn.execute(
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
        ).format(meta=META)
    )
    # Kept by the same transactions that add and remove rows (rows.py). NULL until the
    # table's migration 2 has counted it once: a database made by the first schema.
    conn.execute(
        sql.SQL("ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS images bigint").format(meta=META)
    )
    # Rows of missing files (schema 4), kept apart from `images`, which counts the rows a
    # search sees; kept by the same transactions.
    conn.execute(
        sql.SQL(
            "ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS missing bigint NOT NULL DEFAULT 0"
        ).format(meta=META)
    )
    # What ran the model. NULL in a row from before these columns: torch in fp32, the only
    # way vectors were made then.
    for column in ("backend", "precision"):
        conn.execute(
            sql.SQL("ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS {column} text").format(
                meta=META, column=ident(column)
            )
        )
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {failures} (
                table_name text NOT NULL,
                path_hash text NOT NULL,
                file_path text NOT NULL,
                file_path_raw bytea,
                file_size bigint NOT NULL,
                file_mtime_ns bigint NOT NULL,
                error text NOT NULL,
                PRIMARY KEY (table_name, path_hash)
            )
            """
        ).format(failures=FAILURES)
    )
    # What made each file fail (failure_cause.py); NULL for failures recorded before it was.
    conn.execute(
        sql.SQL("ALTER TABLE {failures} ADD COLUMN IF NOT EXISTS cause text").format(
            failures=FAILURES
        )
    )
