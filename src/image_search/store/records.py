"""The rows of a table as Python sees them, and the encoding of their paths.

Paths in Python are `str` as the file system gives them (bytes that are not UTF-8 are
surrogate-escaped). In the table, `file_path` and `file_name` hold them as text with each
such byte written `\\xNN`, and `file_path_raw` holds the exact bytes of those paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from psycopg import sql

from ..scan import display_path


class StoredFile(NamedTuple):
    """A stored file as the plan compares it with the folder. A named tuple: a run builds one
    for every stored row, and it is made three times faster than a frozen dataclass (a no-op
    re-index of 10,000 files spends most of its time on such per-file steps)."""

    id: int
    file_path: str
    size: int
    mtime_ns: int
    content_hash: str
    undated: bool = False  # no capture date yet (a row stored before schema 3)
    missing_since: datetime | None = None  # found missing by an index run then; None: there

    @property
    def missing(self) -> bool:
        return self.missing_since is not None


@dataclass(frozen=True)
class FailedFile:
    """A file that could not be indexed, as it was when it failed, and what made it fail
    (failure_cause.py; None for a failure recorded before causes were)."""

    file_path: str
    size: int
    mtime_ns: int
    error: str
    cause: str | None = None

    @property
    def stat(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)


class Removed(NamedTuple):
    """The ids of rows deleted, and the processed JPEGs they held that no row of any table
    points at any more."""

    ids: list[int]
    unused_processed: list[str]


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
