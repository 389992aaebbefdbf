"""Which stored images a search or a duplicate scan may see, as SQL conditions: never the rows
of files found missing, and those the user's filters keep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from ..scan import display_path, folder_prefix


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
        """The SQL condition on the rows and its parameters. Rows of files found missing
        are never seen, whatever the filters."""

        def column(name: str) -> sql.Identifier:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        conditions: list[sql.Composable] = [present(alias)]
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
        return sql.SQL(" AND ").join(conditions), params

    def keeps_score(self, score: float) -> bool:
        return self.min_score is None or score >= self.min_score


NO_FILTERS = Filters()


def present(alias: str | None = None) -> sql.Composable:
    """The condition of a row whose file was there when last indexed."""
    column = sql.Identifier(alias, "missing_since") if alias else sql.Identifier("missing_since")
    return sql.SQL("{} IS NULL").format(column)
