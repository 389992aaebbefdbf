"""The words read in photos (OCR), in one table of image-search's own beside the tables of
image vectors: one row per *content* (the SHA-256 of a file's bytes, as each image row holds
it), not per file. So the words follow an image row without being told: a file changed on
disk has new content, hence words of its own; a moved or copied file has the same content,
hence the same words at once; a removed file's words are no longer joined to any row, and
`purge` drops them. A re-index (a new table that takes the old one's name) keeps them too.
No image table's schema changes for it (no migration).

The text is matched in Python (words.py) on candidates this module finds with plain
substring tests on the normalised text, which pg_trgm's GIN index answers quickly where the
server has that extension (PostgreSQL's contrib; the embedded server ships it); without it
they scan this table, which stays correct."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..config import RESERVED_TABLE_PREFIX
from ..scan import path_hash
from .connection import SCHEMA_LOCK, Database
from .filters import NO_FILTERS, Filters
from .records import real_path
from .tables import existing_tables, ident

log = logging.getLogger(__name__)

WORDS_TABLE = f"{RESERVED_TABLE_PREFIX}words"
WORDS = ident(WORDS_TABLE)
TRIGRAM_INDEX = ident(f"{WORDS_TABLE}_search_trgm")


@dataclass(frozen=True)
class ReadWords:
    """What OCR found in one content: its lines (text, confidence, box) and their text
    normalised for matching (words.normalise)."""

    content_hash: str
    lines: list[dict[str, Any]]
    search_text: str


@dataclass(frozen=True)
class Unread:
    """A stored content whose words were never read, or read by another engine."""

    content_hash: str
    processed_path: str


@dataclass(frozen=True)
class WordCandidate:
    """A stored file whose words may match a query, with its normalised text and, when the
    query has a vector too, its similarity to that vector."""

    file_path: str
    processed_path: str
    taken_at: datetime | None
    search_text: str
    similarity: float | None


def create_words_table(conn: psycopg.Connection) -> None:
    """The table and, where pg_trgm can be had, its trigram index (inside the caller's
    transaction; a failed CREATE EXTENSION is undone alone, and the table goes without)."""
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {words} (
                content_hash text PRIMARY KEY,
                engine text NOT NULL,
                lines jsonb NOT NULL,
                search_text text NOT NULL,
                read_at timestamptz NOT NULL DEFAULT now()
            )
            """
        ).format(words=WORDS)
    )
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {index} ON {words} "
                    "USING gin (search_text gin_trgm_ops)"
                ).format(index=TRIGRAM_INDEX, words=WORDS)
            )
    except psycopg.Error as exc:  # no contrib on this server, or no right to add it
        log.debug("no trigram index for the words of photos: %s", exc)


class TableWords:
    """The words of the photos of one table of image vectors."""

    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table
        self._ident = ident(table)

    def ensure(self) -> None:
        """Make the words table if it is missing (once per database, under the schema
        lock: concurrent CREATE ... IF NOT EXISTS can race)."""

        def ensure(conn: psycopg.Connection) -> None:
            exists = conn.execute("SELECT to_regclass(%s)", [WORDS_TABLE]).fetchone()[0]
            if exists is not None:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [SCHEMA_LOCK])
                create_words_table(conn)

        self.database.run(ensure)

    # -- index time ---------------------------------------------------------

    def known(self, content_hashes: Iterable[str], engine: str) -> set[str]:
        """The contents among these whose words this engine has read already."""
        hashes = sorted(set(content_hashes))
        if not hashes:
            return set()
        query = sql.SQL(
            "SELECT content_hash FROM {words} WHERE content_hash = ANY(%s) AND engine = %s"
        ).format(words=WORDS)
        rows = self.database.run(lambda conn: conn.execute(query, [hashes, engine]).fetchall())
        return {row[0] for row in rows}

    def write(self, read: Sequence[ReadWords], engine: str) -> None:
        """Store the words of these contents (replacing what another engine read), in one
        transaction; safe to run again."""
        if not read:
            return
        query = sql.SQL(
            """
            INSERT INTO {words} (content_hash, engine, lines, search_text)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (content_hash) DO UPDATE SET engine = EXCLUDED.engine,
                lines = EXCLUDED.lines, search_text = EXCLUDED.search_text, read_at = now()
            """
        ).format(words=WORDS)
        params = sorted(
            (r.content_hash, engine, Jsonb(r.lines), r.search_text)
            for r in {r.content_hash: r for r in read}.values()
        )

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(query, params)

        self.database.run(write)

    def unread(self, engine: str) -> list[Unread]:
        """The table's contents without words read by `engine` (one of each), for the
        index run to read from their processed JPEGs."""
        query = sql.SQL(
            "SELECT DISTINCT ON (t.content_hash) t.content_hash, t.processed_path "
            "FROM {table} t LEFT JOIN {words} w ON w.content_hash = t.content_hash "
            "WHERE w.content_hash IS NULL OR w.engine <> %s ORDER BY t.content_hash, t.id"
        ).format(table=self._ident, words=WORDS)
        rows = self.database.run(lambda conn: conn.execute(query, [engine]).fetchall())
        return [Unread(digest, processed) for digest, processed in rows]

    def purge(self) -> int:
        """Drop the words of contents that no table of image vectors holds any more (files
        removed or changed); the number dropped."""

        def purge(conn: psycopg.Connection) -> int:
            if conn.execute("SELECT to_regclass(%s)", [WORDS_TABLE]).fetchone()[0] is None:
                return 0
            held = [
                sql.SQL("NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.content_hash = w.content_hash)")
                .format(t=ident(name))
                for name in existing_tables(conn)
            ]
            condition = sql.SQL(" AND ").join(held) if held else sql.SQL("TRUE")
            query = sql.SQL("DELETE FROM {words} w WHERE {condition}").format(
                words=WORDS, condition=condition
            )
            return conn.execute(query).rowcount

        return self.database.run(purge)

    # -- queries ------------------------------------------------------------

    def candidates(
        self,
        pieces: Sequence[str],
        whole: Sequence[str],
        limit: int,
        filters: Filters = NO_FILTERS,
        vector: np.ndarray | None = None,
        kind: str = "vector",
    ) -> list[WordCandidate]:
        """Stored files that pass `filters` and whose normalised text holds at least one of
        `pieces`; those holding more of the `whole` tokens first, at most `limit`. With a
        `vector`, each one's cosine similarity to it."""
        if not pieces:
            return []
        where, params = filters.where("t")
        similarity = (
            sql.SQL("1 - (t.embedding <=> %s::{kind})").format(kind=sql.SQL(kind))
            if vector is not None
            else sql.SQL("NULL::float8")
        )
        query = sql.SQL(
            """
            SELECT t.file_path, t.file_path_raw, t.processed_path, t.taken_at, w.search_text,
                   {similarity}
            FROM {table} t JOIN {words} w ON w.content_hash = t.content_hash
            WHERE {where} AND w.search_text LIKE ANY(%s)
            ORDER BY (SELECT count(*) FROM unnest(%s::text[]) AS token(text)
                      WHERE strpos(w.search_text, token.text) > 0) DESC,
                     length(w.search_text), t.id
            LIMIT %s
            """
        ).format(
            similarity=similarity,
            table=self._ident,
            words=WORDS,
            where=where,
        )
        patterns = [f"%{piece}%" for piece in pieces]
        arguments = [*([vector] if vector is not None else []), *params, patterns, list(whole),
                     limit]
        rows = self.database.run(lambda conn: _if_words(conn, query, arguments, []))
        return [
            WordCandidate(real_path(text, raw), processed, taken_at, search_text,
                          None if score is None else float(score))
            for text, raw, processed, taken_at, search_text, score in rows
        ]

    def lines_of(self, file_path: str) -> list[dict[str, Any]] | None:
        """The lines read in a stored file (None: its words were never read)."""
        query = sql.SQL(
            "SELECT w.lines FROM {table} t JOIN {words} w ON w.content_hash = t.content_hash "
            "WHERE t.path_hash = %s"
        ).format(table=self._ident, words=WORDS)
        rows = self.database.run(lambda conn: _if_words(conn, query, [path_hash(file_path)], []))
        return list(rows[0][0]) if rows else None

    def any_read(self) -> bool:
        """Whether any of the table's rows has its words read (by any engine)."""
        query = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {table} t JOIN {words} w "
            "ON w.content_hash = t.content_hash)"
        ).format(table=self._ident, words=WORDS)
        rows = self.database.run(lambda conn: _if_words(conn, query, [], [(False,)]))
        return bool(rows[0][0])


def _if_words(
    conn: psycopg.Connection, query: sql.Composable, params: Sequence[Any], default: list
) -> list:
    """The query's rows, or `default` where no words were ever read in this database (no
    table yet; autocommit: the failed statement leaves nothing to undo)."""
    try:
        return conn.execute(query, params).fetchall()
    except psycopg.errors.UndefinedTable:
        return default
