"""The rows of one table: look-ups for the diff, idempotent batch writes that keep the
image counts in the meta table, rows of missing files marked, restored and purged, the files
that failed, and stored images by path or id. The row types and path encoding are in
records.py, the filters in filters.py and the similarity queries (nearest, near-duplicate
pairs) in similar.py."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql

from ..scan import display_path, folder_prefix, path_hash
from .filters import present
from .records import (
    REAL_PATH,
    FailedFile,
    NewRow,
    Removed,
    StoredFile,
    StoredImage,
    as_array,
    raw_path,
    real_path,
)
from .similar import SimilarityQueries
from .tables import FAILURES, META, existing_tables, ident


class Rows(SimilarityQueries):
    """The rows of one table. Each write is one transaction, safe to run again."""

    # -- look-ups -----------------------------------------------------------

    def stored_files(self, under: str) -> dict[str, StoredFile]:
        """Rows whose file lies under the folder `under`, by file path (those of missing
        files too: the run restores or purges them)."""
        prefix = display_path(folder_prefix(under))
        return self._stored_where(sql.SQL("left(file_path, %s) = %s"), [len(prefix), prefix])

    def stored_files_at(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        """Rows of these file paths, by file path."""
        return self._stored_where(
            sql.SQL("path_hash = ANY(%s)"), [[path_hash(path) for path in paths]]
        )

    def _stored_where(self, condition: sql.Composable, params: list) -> dict[str, StoredFile]:
        query = sql.SQL(
            "SELECT id, {path}, file_size, file_mtime_ns, content_hash, taken_at IS NULL, "
            "missing_since FROM {table} WHERE {where}"
        ).format(path=REAL_PATH, table=self._ident, where=condition)
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        stored = (
            StoredFile(row_id, real_path(text, raw), size, mtime, digest, undated, missing)
            for row_id, text, raw, size, mtime, digest, undated, missing in rows
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
        """A stored vector for each content hash already embedded (copies, moves; a missing
        file's row too: a folder moved or renamed is missing under its old name)."""
        hashes = list(set(content_hashes))
        if not hashes:
            return {}
        query = sql.SQL(
            "SELECT DISTINCT ON (content_hash) content_hash, embedding FROM {table} "
            "WHERE content_hash = ANY(%s)"
        ).format(table=self._ident)
        rows = self.database.run(lambda conn: conn.execute(query, [hashes]).fetchall())
        return {digest: as_array(vector) for digest, vector in rows}

    def contents_held_elsewhere(self, rows: Sequence[StoredFile]) -> set[str]:
        """The content hashes of these rows that another row, of a file still there, holds
        (the file was moved, or was a copy)."""
        hashes = sorted({row.content_hash for row in rows})
        if not hashes:
            return set()
        query = sql.SQL(
            "SELECT DISTINCT content_hash FROM {table} WHERE content_hash = ANY(%s) AND {present} "
            "AND id <> ALL(%s)"
        ).format(table=self._ident, present=present())
        params = [hashes, [row.id for row in rows]]
        rows_found = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        return {digest for (digest,) in rows_found}

    # -- writes -------------------------------------------------------------

    def upsert(self, rows: Sequence[NewRow], model_name: str) -> None:
        """Insert or update rows in one transaction: a killed run never leaves half a batch,
        and the image counts change in the same transaction. A row of a missing file is
        there again."""
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
                restored = self._set_missing(conn, "path_hash", [row[3] for row in params], False)
                cursor.executemany(query, params, returning=True)
                inserted = sum(1 for _ in cursor.results() if cursor.fetchone()[0])
                self._add_to_count(conn, inserted + restored, -restored)

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

    def mark_missing(self, ids: Sequence[int]) -> int:
        """Mark rows as those of files found missing (now); how many were not marked yet."""
        return self._write_missing(ids, True)

    def restore(self, ids: Sequence[int]) -> int:
        """Rows of missing files whose files are back: seen by searches again; how many."""
        return self._write_missing(ids, False)

    def _write_missing(self, ids: Sequence[int], missing: bool) -> int:
        if not ids:
            return 0

        def write(conn: psycopg.Connection) -> int:
            with conn.transaction():
                changed = self._set_missing(conn, "id", sorted(ids), missing)
                change = -changed if missing else changed
                self._add_to_count(conn, change, -change)
                return changed

        return self.database.run(write)

    def _set_missing(
        self, conn: psycopg.Connection, key: str, values: list, missing: bool
    ) -> int:
        """Mark (or clear) the rows whose `key` is one of `values`; how many changed."""
        query = sql.SQL(
            "UPDATE {table} SET missing_since = {value} WHERE {key} = ANY(%s) AND "
            "missing_since IS {state}"
        ).format(
            table=self._ident,
            value=sql.SQL("now()" if missing else "NULL"),
            key=sql.Identifier(key),
            state=sql.SQL("NULL" if missing else "NOT NULL"),
        )
        return conn.execute(query, [values]).rowcount

    def delete(self, ids: Sequence[int], missing_for_days: int | None = None) -> Removed:
        """Delete rows (with `missing_for_days`, only those of files missing at least that
        long): the ids deleted, and the processed JPEGs they held that no row of any table
        still points at (a table indexed by an earlier version may share them)."""
        if not ids:
            return Removed([], [])
        condition = sql.SQL("")
        params: list = [sorted(ids)]
        if missing_for_days is not None:
            condition = sql.SQL(" AND missing_since <= now() - make_interval(days => %s)")
            params.append(missing_for_days)
        query = sql.SQL(
            "DELETE FROM {table} WHERE id = ANY(%s){condition} "
            "RETURNING id, processed_path, missing_since IS NOT NULL"
        ).format(table=self._ident, condition=condition)

        def write(conn: psycopg.Connection) -> Removed:
            with conn.transaction():
                deleted = conn.execute(query, params).fetchall()
                missing = sum(1 for _, _, was_missing in deleted if was_missing)
                self._add_to_count(conn, -(len(deleted) - missing), -missing)
                processed = list(dict.fromkeys(path for _, path, _ in deleted))
                ids = [row_id for row_id, _, _ in deleted]
                return Removed(ids, self._unreferenced(conn, processed))

        return self.database.run(write)

    @staticmethod
    def _unreferenced(conn: psycopg.Connection, processed: list[str]) -> list[str]:
        """The processed JPEGs of `processed` that no row of any table points at."""
        if not processed:
            return []
        used: set[str] = set()
        for table in existing_tables(conn):
            query = sql.SQL(
                "SELECT DISTINCT processed_path FROM {} WHERE processed_path = ANY(%s)"
            ).format(ident(table))
            used.update(row[0] for row in conn.execute(query, [processed]))
        return [path for path in processed if path not in used]

    def _add_to_count(self, conn: psycopg.Connection, images: int, missing: int = 0) -> None:
        if images or missing:
            conn.execute(
                sql.SQL(
                    "UPDATE {meta} SET images = images + %s, missing = missing + %s "
                    "WHERE table_name = %s"
                ).format(meta=META),
                [images, missing, self.table],
            )

    # -- files that failed ---------------------------------------------------

    def failed_files(self, under: str) -> dict[str, FailedFile]:
        """Files under the folder `under` that failed, by file path."""
        prefix = display_path(folder_prefix(under))
        query = sql.SQL(
            "SELECT {path}, file_size, file_mtime_ns, error, cause FROM {failures} "
            "WHERE table_name = %s AND left(file_path, %s) = %s"
        ).format(path=REAL_PATH, failures=FAILURES)
        params = [self.table, len(prefix), prefix]
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        failed = (
            FailedFile(real_path(text, raw), size, mtime, error, cause)
            for text, raw, size, mtime, error, cause in rows
        )
        return {file.file_path: file for file in failed}

    def remember_failures(self, failed: Sequence[FailedFile]) -> None:
        """Record files that failed, with the size and mtime they failed at and the cause."""
        query = sql.SQL(
            """
            INSERT INTO {failures} (table_name, path_hash, file_path, file_path_raw,
                                    file_size, file_mtime_ns, error, cause)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (table_name, path_hash) DO UPDATE SET
                file_size = EXCLUDED.file_size, file_mtime_ns = EXCLUDED.file_mtime_ns,
                error = EXCLUDED.error, cause = EXCLUDED.cause
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
                f.cause,
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
        text shown for it, as the page and JSON give it back); none for a missing file."""
        found = self._images_where(sql.SQL("path_hash = %s"), [path_hash(path)])
        if not found and "\\x" in path:
            found = self._images_where(sql.SQL("file_path = %s"), [path])
        return found[0] if found else None

    def images(self, ids: Sequence[int]) -> list[StoredImage]:
        return self._images_where(sql.SQL("id = ANY(%s)"), [list(ids)])

    def _images_where(self, condition: sql.Composable, params: list) -> list[StoredImage]:
        """Stored images whose files were there when last indexed."""
        query = sql.SQL(
            "SELECT id, {path}, processed_path, taken_at, file_mtime_ns, embedding "
            "FROM {table} WHERE {where} AND {present}"
        ).format(path=REAL_PATH, table=self._ident, where=condition, present=present())
        rows = self.database.run(lambda conn: conn.execute(query, params).fetchall())
        return [
            StoredImage(row_id, real_path(text, raw), processed, taken_at, mtime, as_array(vector))
            for row_id, text, raw, processed, taken_at, mtime, vector in rows
        ]
