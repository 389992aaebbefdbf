"""All SQL, in three parts with their own transaction rules: `connection` (the server, the
pool, retries), `schema` (DDL, migrations, the meta table) and `rows` (writes and queries;
with `records` for the row types, `filters` for the SQL of filters and `similar` for the
nearest-row and near-duplicate queries)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..config import Settings
from ..vectors import VectorSpec
from .connection import Database, describe_location, redact
from .embedded import start_embedded_server
from .filters import NO_FILTERS, Filters
from .records import FailedFile, Match, NewRow, Removed, StoredFile, StoredImage, as_array
from .rows import Rows
from .schema import Schema, TableInfo, database_size
from .tables import SCHEMA_VERSION, index_name

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "FailedFile",
    "Filters",
    "Match",
    "NO_FILTERS",
    "NewRow",
    "Removed",
    "Rows",
    "Schema",
    "Store",
    "StoredFile",
    "StoredImage",
    "TableInfo",
    "VectorSpec",
    "as_array",
    "database_size",
    "describe_location",
    "index_name",
    "open_store",
    "redact",
    "start_embedded_server",
]


class Store:
    """One table of image vectors: its schema, and its rows once the schema is known."""

    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.schema = Schema(database, table)

    @property
    def table(self) -> str:
        return self.schema.table

    @property
    def rows(self) -> Rows:
        return Rows(self.database, self.schema.table, self.schema.kind)

    def info(self) -> TableInfo | None:
        return self.schema.info()


@contextmanager
def open_store(settings: Settings, table: str | None = None) -> Iterator[Store]:
    """A database opened for one table and closed after (scripts, tests, benchmarks; the
    command line and the page open one Database and share it)."""
    with Database(settings) as database:
        yield Store(database, table or settings.table_name)
