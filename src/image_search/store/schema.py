"""The schema of a table: creating and migrating it (the definitions are in tables.py), its
row in the meta table, refusing other vectors, building the HNSW index, and the atomic
take-over of a re-indexed table. Every change runs in one transaction under an advisory
lock, so that concurrent first runs cannot race."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import psycopg
from psycopg import sql

from ..errors import ImageSearchError
from ..vectors import VectorSpec
from .connection import SCHEMA_LOCK, Database
from .tables import (
    FAILURES,
    INDEX_ROLES,
    META,
    MIGRATIONS,
    SCHEMA_VERSION,
    create_shared_tables,
    create_vector_index,
    ident,
    index_name,
)

log = logging.getLogger(__name__)

# What a new table records for a spec whose precision is `auto` (models.precision's
# recorded_spec, handed in by the caller: the store imports no model code).
Resolve = Callable[[VectorSpec], VectorSpec]


@dataclass(frozen=True)
class TableInfo:
    spec: VectorSpec
    schema_version: int
    images: int  # rows a search sees: files that were there when last indexed
    last_indexed_at: datetime | None
    missing: int = 0  # rows of files found missing, kept for their grace period

    @property
    def stored(self) -> int:
        """Every row, those of missing files too."""
        return self.images + self.missing


def _lock_schema(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [SCHEMA_LOCK])


def _replaceable(info: TableInfo, wanted: VectorSpec) -> bool:
    """An empty table of other vectors: dropped and made again for `wanted`. Rows of missing
    files are not nothing: they come back when the share is mounted again."""
    return info.stored == 0 and not info.spec.same_vectors(wanted)


def _for_new_table(spec: VectorSpec, resolve: Resolve | None) -> VectorSpec:
    if spec.precision != "auto":
        return spec
    if resolve is None:
        raise ValueError("a new table records its precision: pass resolve for precision auto")
    return resolve(spec)


# The type of the table's vector column, beside its meta row.
_VECTOR_COLUMN = (
    "(SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
    " WHERE attrelid = to_regclass(quote_ident(m.table_name)) AND attname = 'embedding')"
)
_INFO_QUERY = sql.SQL(
    "SELECT m.model_name, m.dimension, m.schema_version, m.last_indexed_at, m.images, "
    "m.backend, m.precision, m.missing, "
    + _VECTOR_COLUMN
    + " FROM {meta} m WHERE m.table_name = %s"
).format(meta=META)
# The meta row of a database that no run of this version has written to yet, whatever columns
# it has (autocommit: the failed statement before it leaves nothing to roll back).
_OLD_INFO_QUERY = sql.SQL(
    "SELECT to_jsonb(m), " + _VECTOR_COLUMN + " FROM {meta} m WHERE m.table_name = %s"
).format(meta=META)
_INFO_COLUMNS = (
    "model_name",
    "dimension",
    "schema_version",
    "last_indexed_at",
    "images",
    "backend",
    "precision",
    "missing",
)


def _old_info_row(conn: psycopg.Connection, table: str) -> tuple | None:
    """The row _INFO_QUERY gives, read from an older meta table (absent columns as NULL)."""
    row = conn.execute(_OLD_INFO_QUERY, [table]).fetchone()
    if row is None:
        return None
    meta, column = row
    values = [meta.get(name) for name in _INFO_COLUMNS]
    last = values[3]
    values[3] = datetime.fromisoformat(last) if last else None
    return (*values, column)


class Schema:
    """The schema of one table of image vectors and its row in the meta table."""

    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table
        self._kind: str | None = None

    @property
    def kind(self) -> str:
        """The table's vector storage (`vector` or `halfvec`), read once."""
        if self._kind is None:
            info = self.info()
            self._kind = info.spec.kind if info else "vector"
        return self._kind

    def info(self) -> TableInfo | None:
        """The table's vectors, schema and size (one round trip, no count); None if nothing
        was ever indexed here. A table of an earlier schema is migrated first, so that every
        command (and every query that reads a newer column) works on it."""
        info = self.database.run(self._info)
        if info is None:
            return None
        if info.schema_version < SCHEMA_VERSION:
            self.ensure(info.spec)
            info = replace(info, schema_version=SCHEMA_VERSION)
        self._kind = info.spec.kind
        return info

    def _info(self, conn: psycopg.Connection) -> TableInfo | None:
        try:
            row = conn.execute(_INFO_QUERY, [self.table]).fetchone()
        except psycopg.errors.UndefinedTable:  # no table was ever made in this database
            return None
        except psycopg.errors.UndefinedColumn:
            row = _old_info_row(conn, self.table)
        if row is None:
            return None
        model, dimension, version, last_indexed_at, images, backend, precision, missing, column = (
            row
        )
        if images is None:  # not migrated yet (see _create_shared_tables): count this once
            count = sql.SQL("SELECT count(*) FROM {}").format(ident(self.table))
            images = conn.execute(count).fetchone()[0]
        kind = "halfvec" if (column or "").startswith("halfvec") else "vector"
        # NULL backend and precision: a table filled before they were recorded, by torch in
        # fp32, the only way vectors were made then.
        spec = VectorSpec(model, dimension, kind, backend or "torch", precision or "fp32")
        return TableInfo(spec, version, images, last_indexed_at, missing or 0)

    def ensure(self, wanted: VectorSpec, resolve: Resolve | None = None) -> None:
        """Create or upgrade the table for these vectors; refuse a table of other vectors.
        `resolve` gives a new table's precision where `wanted` says `auto`; it may import
        torch, so it runs before the schema lock is taken, and only for a table to be made."""
        if wanted.precision == "auto" and self._would_create(wanted):
            wanted = _for_new_table(wanted, resolve)

        def ensure(conn: psycopg.Connection) -> None:
            with conn.transaction():
                _lock_schema(conn)  # one process at a time: CREATE ... IF NOT EXISTS can race
                create_shared_tables(conn)
                info = self._info(conn)
                if info is not None and _replaceable(info, wanted):
                    # Nothing stored yet (say, a first run whose model failed to load): nothing
                    # to protect, so the table simply starts again for the vectors asked for.
                    self._drop(conn)
                    info = None
                if info is None:
                    # Resolved above unless another process dropped the table meanwhile.
                    self._create(conn, _for_new_table(wanted, resolve))
                    return
                info.spec.refuse_other(wanted, self.table)
                self._migrate(conn, info.schema_version, info.spec)

        self.database.run(ensure)
        self._kind = None

    def _would_create(self, wanted: VectorSpec) -> bool:
        info = self.database.run(self._info)
        return info is None or _replaceable(info, wanted)

    def _create(self, conn: psycopg.Connection, spec: VectorSpec) -> None:
        """A new table at the current schema version, and its meta row."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {meta} (table_name, model_name, dimension, schema_version, images, "
                "backend, precision) VALUES (%s, %s, %s, %s, 0, %s, %s)"
            ).format(meta=META),
            [
                self.table,
                spec.model_name,
                spec.dimension,
                SCHEMA_VERSION,
                spec.backend,
                spec.precision,
            ],
        )
        self._migrate(conn, 0, spec)

    def _drop(self, conn: psycopg.Connection) -> None:
        """Drop the table and its meta row (inside the caller's transaction)."""
        create_shared_tables(conn)  # a database made before the failures table had none
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {table}").format(table=ident(self.table)))
        for shared in (META, FAILURES):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE table_name = %s").format(shared), [self.table]
            )
        self._kind = None

    def _migrate(self, conn: psycopg.Connection, version: int, spec: VectorSpec) -> None:
        if version > SCHEMA_VERSION:
            raise ImageSearchError(
                f"table '{self.table}' has schema version {version}, newer than this "
                f"image-search understands ({SCHEMA_VERSION}); upgrade image-search"
            )
        for step in range(version, SCHEMA_VERSION):
            log.debug("migrating table %s from schema %d to %d", self.table, step, step + 1)
            MIGRATIONS[step](conn, self.table, spec)
        if version < SCHEMA_VERSION:
            conn.execute(
                sql.SQL("UPDATE {meta} SET schema_version = %s WHERE table_name = %s").format(
                    meta=META
                ),
                [SCHEMA_VERSION, self.table],
            )

    def drop_if_other_vectors(self, wanted: VectorSpec) -> None:
        """Drop this table if it was made for other vectors (a stale re-index)."""
        info = self.info()
        if info is None or info.spec.same_vectors(wanted):
            return

        def drop(conn: psycopg.Connection) -> None:
            with conn.transaction():
                _lock_schema(conn)
                self._drop(conn)

        self.database.run(drop)

    def take_over(self, target: str) -> None:
        """Replace table `target` with this one, its indexes and its meta row, atomically."""

        def swap(conn: psycopg.Connection) -> None:
            with conn.transaction():
                _lock_schema(conn)
                create_shared_tables(conn)
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(target)))
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        ident(self.table), ident(target)
                    )
                )
                for role in INDEX_ROLES:
                    conn.execute(
                        sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                            ident(index_name(self.table, role)), ident(index_name(target, role))
                        )
                    )
                for shared in (META, FAILURES):
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE table_name = %s").format(shared), [target]
                    )
                    conn.execute(
                        sql.SQL("UPDATE {} SET table_name = %s WHERE table_name = %s").format(
                            shared
                        ),
                        [target, self.table],
                    )

        self.database.run(swap)
        self.table = target
        self._kind = None

    def drop_vector_index(self) -> None:
        query = sql.SQL("DROP INDEX IF EXISTS {}").format(
            ident(index_name(self.table, "embedding_hnsw"))
        )
        self.database.run(lambda conn: conn.execute(query))

    def ensure_vector_index(self) -> None:
        """Build the HNSW index if it is missing (after a bulk load, or one that was killed).

        A parallel build takes all of maintenance_work_mem from /dev/shm at its start, which a
        container may cap (Docker's default is 64 MB): the server then reports "could not
        resize shared memory segment", and the index is built again in one process."""

        def build(conn: psycopg.Connection) -> None:
            index = index_name(self.table, "embedding_hnsw")
            found = conn.execute("SELECT to_regclass(quote_ident(%s))", [index]).fetchone()
            if found is not None and found[0] is not None:
                return  # every run ends here; only a missing index needs the lock and memory
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.table])
                conn.execute(
                    sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
                        sql.Literal(self.database.index_build_memory())
                    )
                )
                try:
                    with conn.transaction():
                        create_vector_index(conn, self.table, self.kind)
                except (psycopg.errors.DiskFull, psycopg.errors.OutOfMemory) as exc:
                    if "shared memory" not in str(exc):
                        raise
                    log.info("building the search index in one process: %s", exc)
                    conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
                    create_vector_index(conn, self.table, self.kind)

        self.database.run(build)

    def mark_indexed(self) -> None:
        query = sql.SQL("UPDATE {meta} SET last_indexed_at = now() WHERE table_name = %s").format(
            meta=META
        )
        self.database.run(lambda conn: conn.execute(query, [self.table]))

    def recount(self) -> int:
        """Count the rows once and store the numbers (after a bulk load by COPY); the number
        of searchable ones."""
        query = sql.SQL(
            "UPDATE {meta} SET (images, missing) = (SELECT count(*) FILTER (WHERE missing_since "
            "IS NULL), count(*) FILTER (WHERE missing_since IS NOT NULL) FROM {table}) "
            "WHERE table_name = %s RETURNING images"
        ).format(meta=META, table=ident(self.table))
        return int(self.database.run(lambda conn: conn.execute(query, [self.table]).fetchone()[0]))


def database_size(database: Database) -> int:
    query = "SELECT pg_database_size(current_database())"
    return int(database.run(lambda conn: conn.execute(query).fetchone()[0]))
