"""The rows of one table: look-ups for the diff, idempotent batch writes that keep the
image count in the meta table, the files that failed, and stored images by path or id. The
row types and path encoding are in records.py, the filters in filters.py and the similarity
queries (nearest, near-duplicate pairs) in similar.py."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql

from ..scan import display_path, folder_prefix, path_hash
from .records import (
    REAL_PATH,
    FailedFile,
    NewRow,
    StoredFile,
    StoredImage,
    as_array,
    raw_path,
    real_path,
)
from .similar import SimilarityQueries
from .tables import FAILURES, META


class Rows(SimilarityQueries):
    """The rows of one table. Each write is one transaction, safe to run again."""

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
            "SELECT id, {path}, file_size, file_mtime_ns, content_hash, taken_at IS NULL "
            "FROM {table} WHERE {where}"
        ).format(path=REAL_PATH, table=self._ident, where=condition)
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        stored = (
            StoredFile(row_id, real_path(text, raw), size, mtime, digest, undated)
            for row_id, text, raw, size, mtime, digest, undated in rows
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
                                 file_size, file_mtime_ns, processed_path, model_name, embedding,
                                 taken_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::{kind}, %s)
            ON CONFLICT (path_hash) DO UPDATE SET
                content_hash = EXCLUDED.content_hash, file_size = EXCLUDED.file_size,
                file_mtime_ns = EXCLUDED.file_mtime_ns, processed_path = EXCLUDED.processed_path,
                model_name = EXCLUDED.model_name, embedding = EXCLUDED.embedding,
                taken_at = coalesce(EXCLUDED.taken_at, {table}.taken_at),
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
                r.taken_at,
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
        self._write_many(query, [(size, mtime, row_id) for row_id, size, mtime in sorted(changes)])

    def set_taken_at(self, dates: Sequence[tuple[int, datetime]]) -> None:
        """Record capture dates of stored rows, (id, taken_at), in one statement."""
        if not dates:
            return
        query = sql.SQL(
            "UPDATE {table} t SET taken_at = d.taken_at FROM "
            "(SELECT unnest(%s::bigint[]) AS id, unnest(%s::timestamp[]) AS taken_at) d "
            "WHERE t.id = d.id"
        ).format(table=self._ident)
        ordered = sorted(dates)  # one lock order for concurrent runs
        ids = [row_id for row_id, _ in ordered]
        self.database.run(lambda conn: conn.execute(query, [ids, [d for _, d in ordered]]))

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

    # -- files that failed ---------------------------------------------------

    def failed_files(self, under: str) -> dict[str, FailedFile]:
        """Files under the folder `under` that failed, by file path."""
        prefix = display_path(folder_prefix(under))
        query = sql.SQL(
            "SELECT {path}, file_size, file_mtime_ns, error FROM {failures} "
            "WHERE table_name = %s AND left(file_path, %s) = %s"
        ).format(path=REAL_PATH, failures=FAILURES)
        params = [self.table, len(prefix), prefix]
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        failed = (
            FailedFile(real_path(text, raw), size, mtime, error)
            for text, raw, size, mtime, error in rows
        )
        return {file.file_path: file for file in failed}

    def remember_failures(self, failed: Sequence[FailedFile]) -> None:
        """Record files that failed, with the size and mtime they failed at."""
        query = sql.SQL(
            """
            INSERT INTO {failures} (table_name, path_hash, file_path, file_path_raw,
                                    file_size, file_mtime_ns, error)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (table_name, path_hash) DO UPDATE SET
                file_size = EXCLUDED.file_size, file_mtime_ns = EXCLUDED.file_mtime_ns,
                error = EXCLUDED.error
            """
        ).format(failures=FAILURES)
        params = sorted(
            (
                self.table,
                path_hash(f.file_path),
                display_path(f.file_path),
                raw_path(f.file_path),
                f.size,
                f.mtime_ns,
                f.error,
            )
            for f in failed
        )
        self._write_many(query, params)

    def forget_failures(self, paths: Iterable[str]) -> None:
        """Drop the records of files that no longer fail, or are gone."""
        query = sql.SQL(
            "DELETE FROM {failures} WHERE table_name = %s AND path_hash = ANY(%s)"
        ).format(failures=FAILURES)
        hashes = sorted(path_hash(path) for path in paths)
        if hashes:
            self.database.run(lambda conn: conn.execute(query, [self.table, hashes]))

    def _write_many(self, query: sql.Composable, params: Sequence[tuple]) -> None:
        """One statement per parameter tuple, in one transaction."""
        if not params:
            return

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(query, params)

        self.database.run(write)

    # -- stored images ------------------------------------------------------

    def find(self, path: str) -> StoredImage | None:
        """The stored row of a file, by its path (or, for a name that is not UTF-8, by the
        text shown for it, as the page and JSON give it back)."""
        found = self._images_where(sql.SQL("path_hash = %s"), [path_hash(path)])
        if not found and "\\x" in path:
            found = self._images_where(sql.SQL("file_path = %s"), [path])
        return found[0] if found else None

    def images(self, ids: Sequence[int]) -> list[StoredImage]:
        return self._images_where(sql.SQL("id = ANY(%s)"), [list(ids)])

    def _images_where(self, condition: sql.Composable, params: list) -> list[StoredImage]:
        query = sql.SQL(
            "SELECT id, {path}, processed_path, taken_at, file_mtime_ns, embedding "
            "FROM {table} WHERE {where}"
        ).format(path=REAL_PATH, table=self._ident, where=condition)
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        return [
            StoredImage(row_id, real_path(text, raw), processed, taken_at, mtime, as_array(vector))
            for row_id, text, raw, processed, taken_at, mtime, vector in rows
        ]
