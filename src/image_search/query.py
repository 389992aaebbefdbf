"""What a user asks, from the command line or the page: the parts of a query (images, texts,
files `like`, each added or taken away with a weight), how their vectors combine, and the
filters (folders, capture dates, a lowest score). A ConfigError names the option to fix."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .scan import display_path, folder_prefix
from .store import Filters
from .words import tokens

DEFAULT_TEXT_WEIGHT = 0.5


@dataclass(frozen=True)
class QueryPart:
    """One part of a query: an image file, a text, or a file `like` (its stored vector when
    indexed), added (`sign` +1) or subtracted (-1) with a weight."""

    kind: str  # "image", "text" or "like"
    value: str
    weight: float = 1.0
    sign: int = 1

    def describe(self) -> str:
        if self.kind == "text":
            return f"text '{self.value}'"
        if self.kind == "image":  # --image, or the page's upload (a temporary name)
            return "image"
        return f"like {display_path(os.path.basename(self.value))}"

    def record(self) -> dict[str, Any]:
        """The part as query.json records it."""
        value = display_path(self.value) if self.kind != "text" else self.value
        return {"sign": "+" if self.sign > 0 else "-", "weight": self.weight,
                "kind": self.kind, "value": value}


# A part given as `W:TEXT` or `W:FILE` has the weight W (a positive number).
WEIGHTED = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.*)$", re.DOTALL)


def split_weight(given: str, option: str) -> tuple[float, str]:
    """`W:VALUE` as (W, VALUE), a bare VALUE as (1, VALUE); a ConfigError names `option`."""
    weight, value = 1.0, given
    if match := WEIGHTED.match(given):
        weight, value = float(match[1]), match[2]
        if weight <= 0:
            raise ConfigError(f"{option} {given!r}: the weight must be above 0")
    if not value.strip():
        raise ConfigError(f"{option} {given!r}: give a text or a file after the weight")
    return weight, value


def text_part(given: str, sign: int, option: str) -> QueryPart:
    """A `[W:]TEXT` part (the page's words: never a file on the server)."""
    weight, value = split_weight(given, option)
    return QueryPart("text", value.strip(), weight, sign)


def parse_part(given: str, sign: int, option: str) -> QueryPart:
    """A query part from the command line: `[W:]FILE` when that file exists (an indexed one is
    searched by its stored vector, as with --like), else `[W:]TEXT`."""
    weight, value = split_weight(given, option)
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        return QueryPart("like", path, weight, sign)
    return QueryPart("text", value, weight, sign)


@dataclass(frozen=True)
class Query:
    """What to search for: an image file, a text, both (one combined query), or `like` a
    file (its stored vector when it is indexed, else the file embedded as an image), plus
    any number of further parts added or subtracted (`more`). The query vector is the
    normalised weighted sum of the parts' unit vectors, subtracted parts counted negative."""

    image: Path | None = None
    text: str | None = None
    like: str | None = None
    text_weight: float = DEFAULT_TEXT_WEIGHT
    more: tuple[QueryPart, ...] = ()
    words: str | None = None  # words in the photos (OCR), ranked with the rest by their ranks

    def check(self) -> None:
        """A ConfigError for a query that cannot run, naming what to fix."""
        if self.like is not None and (self.image is not None or self.text is not None):
            raise ConfigError("--like searches by one file alone; leave out --image and --text")
        if self.text is not None and not self.text.strip():
            raise ConfigError("the text query is empty")
        if self.words is not None and not tokens(self.words):
            raise ConfigError(f"--words {self.words!r}: give a word (letters or digits) to find")
        if not any(part.sign > 0 for part in self.parts()) and self.words is None:
            raise ConfigError(
                "give a query: --image FILE, --text TEXT, both, --like FILE, --words WORDS, or "
                "--and TEXT|FILE (--not only takes away from one of those)"
            )
        if not 0 <= self.text_weight <= 1:
            raise ConfigError(f"--text-weight must be between 0 and 1, got {self.text_weight}")

    def parts(self) -> list[QueryPart]:
        """Every part with its sign and weight: --image and --text share a weight of 1 as
        --text-weight says, --like weighs 1, then the added and subtracted parts."""
        base: list[QueryPart] = []
        if self.like is not None:
            base.append(QueryPart("like", self.like))
        both = self.image is not None and self.text is not None
        if self.image is not None:
            base.append(QueryPart("image", str(self.image), 1 - self.text_weight if both else 1))
        if self.text is not None:
            base.append(QueryPart("text", self.text, self.text_weight if both else 1))
        return base + list(self.more)

    def describe(self) -> str:
        """What was searched, in words: "image", "text 'a cat'", "like chelsea.jpg",
        "text 'a beach' + text 'at night' - text 'people'"."""
        words = []
        for part in self.parts():
            words.append(("- " if part.sign < 0 else "+ " if words else "") + part.describe())
        if self.words is not None:
            words.append(("+ " if words else "") + f"words '{self.words}'")
        return " ".join(words)


def combine(image_vector: np.ndarray, text_vector: np.ndarray, text_weight: float) -> np.ndarray:
    """One query from an image and a text: the normalised weighted sum of their unit vectors."""
    return weighted_sum([image_vector, text_vector], [1 - text_weight, text_weight])


def weighted_sum(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The normalised weighted sum of unit vectors (negative weights subtract)."""
    mixed = sum(w * v.astype(np.float64) for v, w in zip(vectors, weights, strict=True))
    return (mixed / max(float(np.linalg.norm(mixed)), 1e-12)).astype(np.float32)


DATE_FORMATS = {  # the shorter forms start at the beginning of their year, month or day
    re.compile(r"\d{4}"): "%Y",
    re.compile(r"\d{4}-\d{2}"): "%Y-%m",
}


def parse_date(name: str, text: str) -> datetime:
    """A date or date and time from a user: 2024, 2024-05, 2024-05-31, 2024-05-31T18:30.
    Capture dates are wall-clock times, so a time zone given is turned into local time."""
    text = text.strip()
    try:  # a month 13 or a year 0 matches a pattern but is no date
        form = next((f for pattern, f in DATE_FORMATS.items() if pattern.fullmatch(text)), None)
        value = datetime.strptime(text, form) if form else datetime.fromisoformat(text)
        return value.astimezone().replace(tzinfo=None) if value.tzinfo else value
    except (ValueError, OverflowError):
        raise ConfigError(
            f"{name}: expected a date like 2024-05-31 (or 2024, 2024-05, 2024-05-31T18:30), "
            f"got {text!r}"
        ) from None


def build_filters(
    under: Iterable[str | Path] = (),
    taken_after: str | None = None,
    taken_before: str | None = None,
    min_score: float | None = None,
    prefix: str = "--",
    roots: Iterable[str | Path] = (),
) -> Filters:
    """Filters from what a user typed (command line or page); a ConfigError names the
    option (`prefix` + its name) that needs fixing. `roots` are the source folders, whose
    files are stored as reached through them (links kept): an `under` folder given by
    another path to the same place is matched in them too."""
    given = [os.path.expanduser(str(folder)) for folder in under if str(folder).strip()]
    folders = tuple(os.path.abspath(folder) for folder in given)
    aliases = tuple(alias for folder in given for alias in folder_aliases(folder, roots))
    after = parse_date(f"{prefix}taken-after", taken_after) if taken_after else None
    before = parse_date(f"{prefix}taken-before", taken_before) if taken_before else None
    if after is not None and before is not None and after >= before:
        raise ConfigError(
            f"{prefix}taken-after ({after:%Y-%m-%d %H:%M}) must be earlier than "
            f"{prefix}taken-before ({before:%Y-%m-%d %H:%M}): no photo can match both"
        )
    if min_score is not None and not -1 <= min_score <= 1:
        raise ConfigError(f"{prefix}min-score must be between -1 and 1, got {min_score}")
    return Filters(folders, after, before, min_score, aliases)


def folder_aliases(folder: str, roots: Iterable[str | Path] = ()) -> list[str]:
    """Other absolute paths of `folder`: with its links resolved (`.` from inside a linked
    folder is its physical path already), and its place inside each root that holds it."""
    real = os.path.realpath(folder)
    aliases = [real]
    for root in roots:
        root_real = os.path.realpath(root)
        if real == root_real or real.startswith(folder_prefix(root_real)):
            inside = os.path.relpath(real, root_real)
            aliases.append(os.path.normpath(os.path.join(os.path.abspath(root), inside)))
    return [alias for alias in aliases if alias != os.path.abspath(folder)]


def missing_folders(filters: Filters) -> list[str]:
    """The `under` folders that do not exist (a typo, or a drive not mounted)."""
    return [folder for folder in filters.under if not os.path.isdir(folder)]


def describe_filters(filters: Filters) -> str:
    """The filters in words ("" for none), for the page's note."""
    parts = []
    if filters.under:
        parts.append("under " + ", ".join(display_path(folder) for folder in filters.under))
    if filters.taken_after is not None:
        parts.append(f"taken from {filters.taken_after:%Y-%m-%d %H:%M}")
    if filters.taken_before is not None:
        parts.append(f"taken before {filters.taken_before:%Y-%m-%d %H:%M}")
    if filters.min_score is not None:
        parts.append(f"score at least {filters.min_score:g}")
    return "; ".join(parts)


def filters_record(filters: Filters) -> dict[str, Any]:
    """The filters as query.json records them (null: not set)."""
    return {
        "under": [display_path(folder) for folder in filters.under],
        "taken_after": filters.taken_after.isoformat() if filters.taken_after else None,
        "taken_before": filters.taken_before.isoformat() if filters.taken_before else None,
        "min_score": filters.min_score,
    }
