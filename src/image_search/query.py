"""What a user asks, from the command line or the page: the parts of a query (images, texts,
files `like`, each added or taken away with a weight), how their vectors combine, and the
filters (folders, capture dates, a lowest score). A ConfigError names the option to fix."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .scan import display_path, folder_prefix, is_image_name
from .store import Filters
from .words import tokens

DEFAULT_TEXT_WEIGHT = 0.5
# How a query's parts and its filters are named, as templates of one {value}: these, in
# English, for the command line, the result folder and the API; the page passes the words of
# its reader's language (web_text.description_words).
DESCRIPTION_WORDS: dict[str, str] = {
    "image": "image",
    "text": "text '{value}'",
    "like": "like {value}",
    "words": "words '{value}'",
    "under": "under {value}",
    "taken_after": "taken from {value}",
    "taken_before": "taken before {value}",
    "min_score": "score at least {value}",
    "filter_separator": "; ",
}
# The kinds of part that name a file; any other kind (a text) is its words.
FILE_KINDS = ("image", "like")


@dataclass(frozen=True)
class QueryPart:
    """One part of a query: an image file, a text, or a file `like` (its stored vector when
    indexed), added (`sign` +1) or subtracted (-1) with a weight."""

    kind: str  # "image", "text" or "like" (FILE_KINDS name a file)
    value: str
    weight: float = 1.0
    sign: int = 1

    def describe(self, words: Mapping[str, str] = DESCRIPTION_WORDS) -> str:
        # An image is not named: --image's file is in the result folder, the page's upload
        # has a temporary name.
        value = display_path(os.path.basename(self.value)) if self.kind == "like" else self.value
        return words[self.kind].format(value=value)

    @property
    def signed_weight(self) -> float:
        return self.sign * self.weight

    def identity(self) -> tuple[str, str]:
        """What the part is, whatever its kind: the same file given as an image and as a
        file `like` is one thing; so are texts that differ only in the spaces around them."""
        if self.kind in FILE_KINDS:
            return ("file", os.path.realpath(self.value))
        return (self.kind, self.value.strip())

    def record(self) -> dict[str, Any]:
        """The part as query.json records it."""
        value = display_path(self.value) if self.kind in FILE_KINDS else self.value
        return {"sign": "+" if self.sign > 0 else "-", "weight": self.weight,
                "kind": self.kind, "value": value}


# A part given as `W:TEXT` or `W:FILE` has the weight W. Anything float() reads before the
# colon counts as a weight (`1e3:`, `-1:`, `nan:`), so that a weight that cannot be used is
# refused rather than searched as part of the words.
WEIGHTED = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|[+-]?(?:nan|inf|infinity)):(.*)$",
    re.DOTALL | re.IGNORECASE,
)
# Weights are ratios between parts: this range keeps every sum of unit vectors finite and
# far from float64's limits, with a ratio of a million between the heaviest and lightest.
MIN_WEIGHT, MAX_WEIGHT = 0.001, 1000.0
BAD_WEIGHT = (
    "{option} {given!r}: the weight must be a number from {low:g} to {high:g} (to search for "
    "text that starts with a number and a colon, put a weight in front: 1:{given})"
)
NO_VALUE = "{option} {given!r}: give a text or a file after the weight"
NO_SUCH_FILE = (
    "{option} {given}: no such file (a part with a path separator or an image file's extension "
    "is taken for a file; to search for such words, put spaces in them)"
)
# A combined vector shorter than this share of the sum of its parts' weights is noise, not a
# direction: the parts cancel out.
MIN_RELATIVE_LENGTH = 1e-3
CANCELLED = (
    "the query's parts cancel each other out: {described} adds up to (almost) nothing; "
    "change a part, or give one of them another weight"
)


class CancelledQuery(ConfigError):
    """Parts that add up to a vector of (almost) zero length: there is nothing to search for."""


def split_weight(given: str, option: str) -> tuple[float, str]:
    """`W:VALUE` as (W, VALUE), a bare VALUE as (1, VALUE); a ConfigError names `option`."""
    weight, value = 1.0, given
    if match := WEIGHTED.match(given):
        weight, value = float(match[1]), match[2]
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # also refuses nan and inf
            raise ConfigError(
                BAD_WEIGHT.format(option=option, given=given, low=MIN_WEIGHT, high=MAX_WEIGHT)
            )
    if not value.strip():
        raise ConfigError(NO_VALUE.format(option=option, given=given))
    return weight, value


def text_part(given: str, sign: int, option: str) -> QueryPart:
    """A `[W:]TEXT` part (the page's words: never a file on the server)."""
    weight, value = split_weight(given, option)
    return QueryPart("text", value.strip(), weight, sign)


def parse_part(given: str, sign: int, option: str) -> QueryPart:
    """A query part from the command line: `[W:]FILE` when that file exists (an indexed one is
    searched by its stored vector, as with --like), else `[W:]TEXT`. Words that look like a
    file (see looks_like_a_file) but name none are refused: a typo in a path is no query."""
    weight, value = split_weight(given, option)
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        return QueryPart("like", path, weight, sign)
    if looks_like_a_file(value):
        raise ConfigError(NO_SUCH_FILE.format(option=option, given=display_path(value)))
    return QueryPart("text", value, weight, sign)


def looks_like_a_file(value: str) -> bool:
    """A path rather than words: an image file's name, or a path without spaces (`a/b`,
    `~/x`); words with a slash and spaces (`black/white photo`) are words."""
    value = value.strip()
    if is_image_name(value):
        return True
    if value.startswith(("/", "~", "./", "../")):
        return True
    return os.sep in value and not any(character.isspace() for character in value)


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
        if not 0 <= self.text_weight <= 1:  # also refuses nan
            raise ConfigError(f"--text-weight must be between 0 and 1, got {self.text_weight}")
        if self.cancels_out():
            raise CancelledQuery(CANCELLED.format(described=self.describe()))

    def cancels_out(self) -> bool:
        """Whether the parts cancel whatever their vectors: each text or file is added as
        much as it is taken away (`--text "a cat" --not "a cat"`, `--like F --not F`)."""
        parts = self.parts()
        if not parts:  # words alone
            return False
        totals: dict[tuple[str, str], float] = {}
        for part in parts:
            identity = part.identity()  # a file's: its real path, a look-up on disk
            totals[identity] = totals.get(identity, 0.0) + part.signed_weight
        scale = sum(part.weight for part in parts)
        return all(abs(total) <= MIN_RELATIVE_LENGTH * scale for total in totals.values())

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

    def describe(self, words: Mapping[str, str] = DESCRIPTION_WORDS) -> str:
        """What was searched, in words: "image", "text 'a cat'", "like chelsea.jpg"; with
        several parts each with its weight: "1 × text 'a beach' + 0.5 × text 'at night' -
        1 × text 'people'"."""
        parts = self.parts()
        if len(parts) == 1 and self.words is None:
            return parts[0].describe(words)
        described = []
        for part in parts:
            sign = "- " if part.sign < 0 else "+ " if described else ""
            described.append(f"{sign}{part.weight:g} × {part.describe(words)}")
        if self.words is not None:
            in_photos = words["words"].format(value=self.words)
            described.append(("+ " if described else "") + in_photos)
        return " ".join(described)


def combine(image_vector: np.ndarray, text_vector: np.ndarray, text_weight: float) -> np.ndarray:
    """One query from an image and a text: the normalised weighted sum of their unit vectors."""
    return weighted_sum([image_vector, text_vector], [1 - text_weight, text_weight])


def weighted_sum(
    vectors: Sequence[np.ndarray], weights: Sequence[float], described: str = "the query"
) -> np.ndarray:
    """The normalised weighted sum of unit vectors (negative weights subtract). Parts that
    cancel, or a vector that is not finite (a model's fault), raise CancelledQuery, which
    says what was `described`."""
    mixed = sum(w * v.astype(np.float64) for v, w in zip(vectors, weights, strict=True))
    length = float(np.linalg.norm(mixed))
    if not math.isfinite(length) or length <= MIN_RELATIVE_LENGTH * sum(map(abs, weights)):
        raise CancelledQuery(CANCELLED.format(described=described))
    return (mixed / length).astype(np.float32)


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


def describe_filters(filters: Filters, words: Mapping[str, str] = DESCRIPTION_WORDS) -> str:
    """The filters in words ("" for none), for the page's note."""
    after, before, score = filters.taken_after, filters.taken_before, filters.min_score
    values = {
        "under": ", ".join(display_path(folder) for folder in filters.under) or None,
        "taken_after": None if after is None else f"{after:%Y-%m-%d %H:%M}",
        "taken_before": None if before is None else f"{before:%Y-%m-%d %H:%M}",
        "min_score": None if score is None else f"{score:g}",
    }
    described = [words[name].format(value=v) for name, v in values.items() if v is not None]
    return words["filter_separator"].join(described)


def filters_record(filters: Filters) -> dict[str, Any]:
    """The filters as query.json records them (null: not set)."""
    return {
        "under": [display_path(folder) for folder in filters.under],
        "taken_after": filters.taken_after.isoformat() if filters.taken_after else None,
        "taken_before": filters.taken_before.isoformat() if filters.taken_before else None,
        "min_score": filters.min_score,
    }
