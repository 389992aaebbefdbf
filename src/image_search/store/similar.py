"""The similarity queries of one table: the nearest rows to a vector, and the pairs of
rows alike (near-duplicates), both on the HNSW index, with their planner settings."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from .connection import Database
from .filters import NO_FILTERS, Filters
from .records import REAL_PATH, Match, real_path

# pgvector's HNSW search stops after ef_search candidates; keep it above k so k come back.
# 200 is where recall of the true nearest stops rising much at a million rows while a search
# stays quick (BENCHMARKS.md, section i has the figures).
MIN_EF_SEARCH = 200
MAX_EF_SEARCH = 1000
# Candidates per image when looking for near-duplicates. pgvector's default, 40, misses some
# pairs of near-copies in a large table; 100 finds them all for a little more time (the
# figures: bench/bench_duplicates.py, BENCHMARKS.md).
DUPLICATE_EF_SEARCH = 100


class SimilarityQueries:
    """The rows of one table as searched by similarity; Rows (rows.py) adds the look-ups
    and the writes."""

    def __init__(self, database: Database, table: str, kind: str) -> None:
        self.database = database
        self.table = table
        self.kind = kind
        self._ident = sql.Identifier(table)

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
            # pgvector's cost of an HNSW scan swings with ef_search: at some sizes the planner
            # reads the whole table instead, many times slower than the index. With a filter
            # it also guesses the selectivity; the iterative index scan is what keeps a
            # filtered search fast at scale. A table without the index (not built yet) is
            # still read in full.
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
