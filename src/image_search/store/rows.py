"""The rows of one table: look-ups for the diff, idempotent batch writes that keep the
image count in the meta table, and the nearest-neighbour query.

Paths in Python are `str` as the file system gives them (bytes that are not UTF-8 are
surrogate-escaped). In the table, `file_path` and `file_name` hold them as text with each
such byte written `\\xNN`, and `file_path_raw` holds the exact bytes of those paths."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from ..scan import display_path, folder_prefix, path_hash
from .connection import Database
from .schema import META

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
    content_hash: str
    size: int
    mtime_ns: int
    processed_path: str
    embedding: np.ndarray


@dataclass(frozen=True)
class Match:
    rank: int
    score: float
    file_path: str  # the real path, for opening and copying the file
    processed_path: str

    @property
    def file_name(self) -> str:
        return os.path.basename(self.file_path)


def as_array(vector: object) -> np.ndarray:
    """pgvector returns its own Vector type; the rest of the code speaks numpy."""
    to_numpy = getattr(vector, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)


def raw_path(path: str) -> bytes | None:
    """The exact bytes of a path that text cannot hold; None for a valid UTF-8 path."""
    return None if display_path(path) == path else os.fsencode(path)


def real_path(text: str, raw: bytes | None) -> str:
    return os.fsdecode(raw) if raw is not None else text


# The stored path as Python sees it: its exact bytes where text could not hold them.
REAL_PATH = sql.SQL("file_path, file_path_raw")


class Rows:
    """The rows of one table. Each write is one transaction, safe to run again."""

    def __init__(self, database: Database, table: str, kind: str) -> None:
        self.database = database
        self.table = table
        self.kind = kind
        self._ident = sql.Identifier(table)

    # -- look-ups -----------------------------------------------------------

    def stored_files(self, under: str) -> dict[str, StoredFile]:
        """Rows whose file lies under the folder `under`, by file path."""
        prefix = display_path(folder_prefix(under))
        return self._stored_where(sql.SQL("left(file_path, %s) = %s"), [len(prefix), prefix])

    def stored_files_at(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        """Rows of these file paths, by file path."""
        return self._stored_where(
            sql.SQL("path_hash = ANY(%s)"), [[path_hash(path) for path in paths]]
        )

    def _stored_where(self, condition: sql.Composable, params: list) -> dict[str, StoredFile]:
        query = sql.SQL(
            "SELECT id, {path}, file_size, file_mtime_ns, content_hash FROM {table} WHERE {where}"
        ).format(path=REAL_PATH, table=self._ident, where=condition)
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        stored = (
            StoredFile(row_id, real_path(text, raw), size, mtime, digest)
            for row_id, text, raw, size, mtime, digest in rows
        )
        return {file.file_path: file for file in stored}

    def file_paths_outside(self, folder: str) -> list[str]:
        """Stored files that do not lie under `folder` (indexed with another --source)."""
        prefix = display_path(folder_prefix(folder))
        query = sql.SQL("SELECT {path} FROM {table} WHERE left(file_path, %s) <> %s").format(
            path=REAL_PATH, table=self._ident
        )
        rows = self.database.run(lambda conn: conn.execute(query, [len(prefix), prefix]).fetchall())
        return [real_path(text, raw) for text, raw in rows]

    def real_path_of(self, shown: str) -> str | None:
        """The real path of the stored file shown as `shown` (see scan.display_path)."""
        query = sql.SQL("SELECT {path} FROM {table} WHERE file_path = %s LIMIT 1").format(
            path=REAL_PATH, table=self._ident
        )
        row = self.database.run(lambda conn: conn.execute(query, [shown]).fetchone())
        return real_path(*row) if row else None

    def vectors_by_content(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """A stored vector for each content hash already embedded (copies, moves)."""
        hashes = list(set(content_hashes))
        if not hashes:
            return {}
        query = sql.SQL(
            "SELECT DISTINCT ON (content_hash) content_hash, embedding FROM {table} "
            "WHERE content_hash = ANY(%s)"
        ).format(table=self._ident)
        rows = self.database.run(lambda conn: conn.execute(query, [hashes]).fetchall())
        return {digest: as_array(vector) for digest, vector in rows}

    # -- writes -------------------------------------------------------------

    def upsert(self, rows: Sequence[NewRow], model_name: str) -> None:
        """Insert or update rows in one transaction: a killed run never leaves half a batch,
        and the image count changes in the same transaction."""
        if not rows:
            return
        query = sql.SQL(
            """
            INSERT INTO {table} (file_path, file_path_raw, file_name, path_hash, content_hash,
                                 file_size, file_mtime_ns, processed_path, model_name, embedding)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::{kind})
            ON CONFLICT (path_hash) DO UPDATE SET
                content_hash = EXCLUDED.content_hash, file_size = EXCLUDED.file_size,
                file_mtime_ns = EXCLUDED.file_mtime_ns, processed_path = EXCLUDED.processed_path,
                model_name = EXCLUDED.model_name, embedding = EXCLUDED.embedding,
                registered_at = now()
            RETURNING (xmax = 0)
            """
        ).format(table=self._ident, kind=sql.SQL(self.kind))
        params = [
            (
                display_path(r.file_path),
                raw_path(r.file_path),
                display_path(os.path.basename(r.file_path)),
                path_hash(r.file_path),
                r.content_hash,
                r.size,
                r.mtime_ns,
                r.processed_path,
                model_name,
                r.embedding,
            )
            for r in rows
        ]
        params.sort(key=lambda row: row[3])  # one lock order for concurrent runs

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(query, params, returning=True)
                inserted = sum(1 for _ in cursor.results() if cursor.fetchone()[0])
                self._add_to_count(conn, inserted)

        self.database.run(write)

    def update_stat(self, changes: Sequence[tuple[int, int, int]]) -> None:
        """Record a new size and mtime for rows whose content did not change: (id, size, mtime)."""
        if not changes:
            return
        query = sql.SQL(
            "UPDATE {table} SET file_size = %s, file_mtime_ns = %s WHERE id = %s"
        ).format(table=self._ident)
        params = [(size, mtime, row_id) for row_id, size, mtime in sorted(changes)]

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(query, params)

        self.database.run(write)

    def delete(self, ids: Sequence[int]) -> list[str]:
        """Delete rows; the processed paths they held."""
        if not ids:
            return []
        query = sql.SQL("DELETE FROM {table} WHERE id = ANY(%s) RETURNING processed_path").format(
            table=self._ident
        )

        def write(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                processed = [row[0] for row in conn.execute(query, [list(ids)])]
                self._add_to_count(conn, -len(processed))
                return processed

        return self.database.run(write)

    def _add_to_count(self, conn: psycopg.Connection, change: int) -> None:
        if change:
            conn.execute(
                sql.SQL("UPDATE {meta} SET images = images + %s WHERE table_name = %s").format(
                    meta=META
                ),
                [change, self.table],
            )

    # -- search -------------------------------------------------------------

    def nearest(self, vector: np.ndarray, k: int) -> list[Match]:
        """The k rows most similar to `vector` by cosine similarity, best first (HNSW).
        Sent as one pipeline: one round trip to the server."""
        query = sql.SQL(
            "SELECT {path}, processed_path, 1 - (embedding <=> %s::{kind}) "
            "FROM {table} ORDER BY embedding <=> %s::{kind} LIMIT %s"
        ).format(path=REAL_PATH, table=self._ident, kind=sql.SQL(self.kind))
        ef_search = str(min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * k)))

        def search(conn: psycopg.Connection) -> list[tuple]:
            with conn.pipeline(), conn.transaction():
                conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true), "
                    "set_config('hnsw.iterative_scan', 'strict_order', true)",
                    [ef_search],
                )
                cursor = conn.execute(query, [vector, vector, k])
            return cursor.fetchall()

        return [
            Match(rank, float(score), real_path(text, raw), processed)
            for rank, (text, raw, processed, score) in enumerate(
                self.database.run(search), start=1
            )
        ]
