"""The rows of one table: look-ups for the diff, idempotent batch writes that keep the
image count in the meta table, and the nearest-neighbour query.

Paths in Python are `str` as the file system gives them (bytes that are not UTF-8 are
surrogate-escaped). In the table, `file_path` and `file_name` hold them as text with each
such byte written `\\xNN`, and `file_path_raw` holds the exact bytes of those paths."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..scan import display_path, folder_prefix, path_hash
from .connection import Database
from .schema import FAILURES, META

# pgvector's HNSW search stops after ef_search candidates; keep it above k so k come back.
# At 1,000,000 rows, 100 found 91% of the true 10 nearest and 200 found 98%, for a search
# p95 of 12 ms here (BENCHMARKS.md, section i).
MIN_EF_SEARCH = 200
MAX_EF_SEARCH = 1000
# Candidates per image when looking for near-duplicates. pgvector's default, 40, missed about
# 1% of the pairs of near-copies among 100,000 vectors (bench/bench_duplicates.py); 100 found
# all of them, for about 40% more time.
DUPLICATE_EF_SEARCH = 100


@dataclass(frozen=True)
class StoredFile:
    id: int
    file_path: str
    size: int
    mtime_ns: int
    content_hash: str
    undated: bool = False  # no capture date yet (a row stored before schema 3)


@dataclass(frozen=True)
class FailedFile:
    """A file that could not be indexed, as it was when it failed."""

    file_path: str
    size: int
    mtime_ns: int
    error: str

    @property
    def stat(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)


@dataclass(frozen=True)
class NewRow:
    file_path: str
    content_hash: str
    size: int
    mtime_ns: int
    processed_path: str
    embedding: np.ndarray
    taken_at: datetime | None = None


@dataclass(frozen=True)
class Match:
    rank: int
    score: float
    file_path: str  # the real path, for opening and copying the file
    processed_path: str
    taken_at: datetime | None = None

    @property
    def file_name(self) -> str:
        return os.path.basename(self.file_path)


@dataclass(frozen=True)
class StoredImage:
    """One stored row with its vector: a `--like` query, a member of a duplicate group."""

    id: int
    file_path: str
    processed_path: str
    taken_at: datetime | None
    mtime_ns: int
    embedding: np.ndarray

    @property
    def file_name(self) -> str:
        return os.path.basename(self.file_path)


@dataclass(frozen=True)
class Filters:
    """Which stored images a search may return: files under some folders (absolute paths),
    a capture-date range (`taken_after` inclusive, `taken_before` exclusive), a lowest score.
    Rows without a capture date never pass a date filter."""

    under: tuple[str, ...] = ()
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    min_score: float | None = None
    under_aliases: tuple[str, ...] = ()
    """Other spellings of the `under` folders (through links, or with links resolved) that
    stored paths may use: matched too, never shown."""

    @property
    def narrows_rows(self) -> bool:
        """Whether some rows are left out before ranking (the score is applied after)."""
        return bool(self.under) or self.taken_after is not None or self.taken_before is not None

    def where(self, alias: str | None = None) -> tuple[sql.Composable, list]:
        """The SQL condition on the rows and its parameters (TRUE when nothing narrows)."""

        def column(name: str) -> sql.Identifier:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        conditions: list[sql.Composable] = []
        params: list = []
        if self.under:
            folders = []
            for folder in dict.fromkeys(self.under + self.under_aliases):
                prefix = display_path(folder_prefix(folder))
                folders.append(sql.SQL("left({}, %s) = %s").format(column("file_path")))
                params += [len(prefix), prefix]
            conditions.append(sql.SQL("({})").format(sql.SQL(" OR ").join(folders)))
        if self.taken_after is not None:
            conditions.append(sql.SQL("{} >= %s").format(column("taken_at")))
            params.append(self.taken_after)
        if self.taken_before is not None:
            conditions.append(sql.SQL("{} < %s").format(column("taken_at")))
            params.append(self.taken_before)
        if not conditions:
            return sql.SQL("TRUE"), []
        return sql.SQL(" AND ").join(conditions), params

    def keeps_score(self, score: float) -> bool:
        return self.min_score is None or score >= self.min_score


NO_FILTERS = Filters()


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

    # -- search -------------------------------------------------------------

    def nearest(self, vector: np.ndarray, k: int, filters: Filters = NO_FILTERS) -> list[Match]:
        """The k rows most similar to `vector` by cosine similarity, best first (HNSW).
        Sent as one pipeline: one round trip to the server.

        Filtered queries stay on the HNSW index: pgvector's iterative scan goes on past
        ef_search until k rows pass the filter. It gives up after hnsw.max_scan_tuples
        (a filter that keeps very few rows of a large table); then an exact scan of the
        rows that pass answers instead, so k come back whenever k match. The lowest score
        is applied to the ranked rows: they come best first, so the cut is exact."""
        rows = self.database.run(lambda conn: self._nearest(conn, vector, k, filters))
        if filters.narrows_rows and len(rows) < k:
            rows = self.database.run(lambda conn: self._nearest(conn, vector, k, filters, True))
        matches = [
            Match(rank, float(score), real_path(text, raw), processed, taken_at)
            for rank, (text, raw, processed, taken_at, score) in enumerate(rows, start=1)
        ]
        return [m for m in matches if filters.keeps_score(m.score)]

    def _nearest_query(self, filters: Filters) -> tuple[sql.Composable, list]:
        where, params = filters.where()
        query = sql.SQL(
            "SELECT {path}, processed_path, taken_at, 1 - (embedding <=> %s::{kind}) "
            "FROM {table} WHERE {where} ORDER BY embedding <=> %s::{kind} LIMIT %s"
        ).format(path=REAL_PATH, table=self._ident, kind=sql.SQL(self.kind), where=where)
        return query, params

    def _search_settings(
        self, conn: psycopg.Connection, k: int, filters: Filters, exact: bool
    ) -> None:
        """Planner settings for this transaction only."""
        ef_search = str(min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * k)))
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), "
            "set_config('hnsw.iterative_scan', 'strict_order', true)",
            [ef_search],
        )
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        else:
            # pgvector's cost of an HNSW scan swings with ef_search: at 20,000 rows and
            # ef_search 100 the planner read the whole table (40-80 ms, against 1-7 ms on the
            # index). With a filter it also guesses the selectivity; the iterative index scan
            # is what keeps a filtered search fast at scale. A table without the index
            # (not built yet) is still read in full.
            conn.execute("SET LOCAL enable_seqscan = off")

    def _nearest(
        self,
        conn: psycopg.Connection,
        vector: np.ndarray,
        k: int,
        filters: Filters,
        exact: bool = False,
    ) -> list[tuple]:
        query, params = self._nearest_query(filters)
        try:
            # BEGIN and COMMIT go into the pipeline as statements: conn.transaction() would
            # wait for the server at each end, three round trips instead of one.
            with conn.pipeline():
                conn.execute("BEGIN")
                self._search_settings(conn, k, filters, exact)
                cursor = conn.execute(query, [vector, *params, vector, k])
                conn.execute("COMMIT")
        except psycopg.Error:
            if conn.pgconn.transaction_status == TransactionStatus.INERROR:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            raise
        return cursor.fetchall()

    def explain_nearest(self, vector: np.ndarray, k: int, filters: Filters = NO_FILTERS) -> str:
        """The plan of the index-backed query `nearest` sends first (for tests and benchmarks)."""
        query, params = self._nearest_query(filters)

        def explain(conn: psycopg.Connection) -> str:
            with conn.transaction():
                self._search_settings(conn, k, filters, exact=False)
                rows = conn.execute(sql.SQL("EXPLAIN ") + query, [vector, *params, vector, k])
                return "\n".join(row[0] for row in rows)

        return self.database.run(explain)

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

    def close_pairs(
        self, min_score: float, neighbours: int, filters: Filters = NO_FILTERS, parts: int = 1
    ) -> list[tuple[int, int, float]]:
        """Pairs of rows (id, id, score; smaller id first) at least `min_score` alike, found
        by asking the HNSW index for each row's `neighbours` nearest: one index scan per
        row, never a comparison of every pair. The rows are split into `parts` ranges of
        ids searched at the same time on their own connections (a server process each)."""
        query, params = self._close_pairs_query(min_score, neighbours, filters, ranged=True)
        low, high = self.database.run(
            lambda conn: conn.execute(
                sql.SQL("SELECT min(id), max(id) FROM {table}").format(table=self._ident)
            ).fetchone()
        )
        if low is None:
            return []
        step = (high - low) // max(1, parts) + 1

        def search(start: int) -> list[tuple]:
            def run(conn: psycopg.Connection) -> list[tuple]:
                with conn.transaction():
                    self._close_pairs_settings(conn, neighbours)
                    return conn.execute(query, [*params, start, start + step]).fetchall()

            return self.database.run(run)

        with ThreadPoolExecutor(max_workers=max(1, parts)) as pool:
            found = pool.map(search, range(low, high + 1, step))
        pairs: dict[tuple[int, int], float] = {}
        for a, b, score in (pair for part in found for pair in part):
            pairs[(min(a, b), max(a, b))] = min(1.0, float(score))
        return [(a, b, score) for (a, b), score in pairs.items()]

    def explain_close_pairs(
        self, min_score: float, neighbours: int, filters: Filters = NO_FILTERS
    ) -> str:
        """The plan of the query `close_pairs` sends (for tests and benchmarks)."""
        query, params = self._close_pairs_query(min_score, neighbours, filters)

        def explain(conn: psycopg.Connection) -> str:
            with conn.transaction():
                self._close_pairs_settings(conn, neighbours)
                rows = conn.execute(sql.SQL("EXPLAIN ") + query, params)
                return "\n".join(row[0] for row in rows)

        return self.database.run(explain)

    def _close_pairs_query(
        self, min_score: float, neighbours: int, filters: Filters, ranged: bool = False
    ) -> tuple[sql.Composable, list]:
        """The query, and its parameters but for the id range [start, end) when `ranged`."""
        outer, outer_params = filters.where("a")
        inner, inner_params = filters.where("b")
        query = sql.SQL(
            """
            SELECT a.id, n.id, 1 - n.distance FROM {table} a
            CROSS JOIN LATERAL (
                SELECT b.id, b.embedding <=> a.embedding AS distance FROM {table} b
                WHERE {inner} ORDER BY b.embedding <=> a.embedding LIMIT %s
            ) n
            WHERE {outer} AND n.id <> a.id AND n.distance <= %s {id_range}
            """
        ).format(
            table=self._ident,
            inner=inner,
            outer=outer,
            id_range=sql.SQL("AND a.id >= %s AND a.id < %s" if ranged else ""),
        )
        # A little slack below the threshold: float rounding of an exact copy's distance.
        return query, [*inner_params, neighbours + 1, *outer_params, 1 - min_score + 1e-6]

    @staticmethod
    def _close_pairs_settings(conn: psycopg.Connection, neighbours: int) -> None:
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), "
            "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            [str(max(DUPLICATE_EF_SEARCH, neighbours + 1))],
        )
        conn.execute("SET LOCAL enable_seqscan = off")  # one index scan per row
