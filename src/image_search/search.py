"""A query: preprocess and embed it like an indexed image (or embed text), rank, write the
result folder (seed step ⑪)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import Settings
from .errors import ConfigError, ImageError, ImageSearchError
from .images import ResizeSpec, prepare_file, save_jpeg
from .models import Embedder
from .models.precision import planned_spec
from .scan import display_path, folder_prefix
from .store import (
    NO_FILTERS,
    Filters,
    Match,
    Store,
    StoredImage,
    TableInfo,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
QUERY_IMAGE_FILE = "query.jpg"
QUERY_TEXT_FILE = "query.txt"
QUERY_RECORD_FILE = "query.json"  # every part with its sign and weight, and the filters
RESERVED_NAMES = {CONFIG_FILE, RESULTS_FILE, QUERY_IMAGE_FILE, QUERY_TEXT_FILE, QUERY_RECORD_FILE}
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

    def check(self) -> None:
        """A ConfigError for a query that cannot run, naming what to fix."""
        if self.like is not None and (self.image is not None or self.text is not None):
            raise ConfigError("--like searches by one file alone; leave out --image and --text")
        if self.text is not None and not self.text.strip():
            raise ConfigError("the text query is empty")
        if not any(part.sign > 0 for part in self.parts()):
            raise ConfigError(
                "give a query: --image FILE, --text TEXT, both, --like FILE, or --and TEXT|FILE "
                "(--not only takes away from one of those)"
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


@dataclass
class SearchResult:
    output_dir: Path | None  # None with save-results false
    searched: int
    results: list[Match]
    warnings: list[str]
    description: str = field(default="")  # what was searched, as Query.describe() says

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "searched": self.searched,
            "results": [result_record(m) for m in self.results],
        }


def result_record(match: Match) -> dict[str, Any]:
    """One ranked result for JSON and results.jsonl (paths as text: see scan.display_path)."""
    return {
        "rank": match.rank,
        "score": match.score,
        "file_name": display_path(match.file_name),
        "file_path": display_path(match.file_path),
        "taken_at": match.taken_at.isoformat() if match.taken_at else None,
    }


def make_result_folder(output_directory: Path, now: datetime | None = None) -> Path:
    """<output>/<yyyymmdd-hhmmss>, or -2, -3, ... when that second is taken already."""
    output_directory = output_directory.resolve()
    output_directory.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    attempt = 1
    while True:
        folder = output_directory / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            attempt += 1


def copy_best_match(match: Match, folder: Path) -> str | None:
    """Copy the original file (name and format kept); its processed JPEG if it has gone.
    Returns a warning for the user, or None."""
    name = match.file_name if match.file_name not in RESERVED_NAMES else f"match-{match.file_name}"
    original = Path(match.file_path)
    if original.is_file():
        shutil.copy2(original, folder / name)
        return None
    processed = Path(match.processed_path)
    if processed.is_file():
        shutil.copy2(processed, folder / f"{Path(name).stem}.processed.jpg")
        return (
            f"original file is gone ({display_path(str(original))}); copied its processed "
            "JPEG instead"
        )
    return (
        f"original file is gone ({display_path(str(original))}) and so is its processed "
        "JPEG; nothing copied"
    )


def write_result_folder(
    settings: Settings, matches: list[Match], searched: int, write_query: Callable[[Path], Any]
) -> tuple[Path | None, list[str]]:
    """The result folder (seed step ⑪) and any warnings; nothing with save-results false."""
    if not settings.save_results:
        return None, []
    folder = make_result_folder(settings.output_directory)
    (folder / CONFIG_FILE).write_text(
        json.dumps(settings.redacted(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    with open(folder / RESULTS_FILE, "w", encoding="utf-8") as out:
        for match in matches:
            record = result_record(match) | {"searched": searched}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_query(folder)
    warnings = []
    if matches:
        warning = copy_best_match(matches[0], folder)
        if warning:
            log.warning(warning)
            warnings.append(warning)
    return folder, warnings


class Searcher:
    """Answers queries against one table with one model; reuse it to keep the model warm."""

    def __init__(self, settings: Settings, store: Store, embedder: Embedder) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder

    def _table_info(self) -> TableInfo:
        """The table's size, checked before any model is loaded: refuse an empty index
        or one made with another model."""
        info = self.store.info()
        if info is None or info.images == 0:
            raise ImageSearchError(
                f"no images are indexed in table '{self.settings.table_name}' yet; "
                "run `image-search index` (or press Rescan on the page) first"
            )
        info.spec.refuse_other(planned_spec(self.settings), self.store.table)
        return info

    def search(
        self, query: Query, top_k: int | None = None, filters: Filters = NO_FILTERS
    ) -> SearchResult:
        """Any query, filtered: images are preprocessed and embedded exactly as indexed images
        are; an indexed `like` file is searched by its stored vector (no model); several parts
        are one vector, their normalised weighted sum."""
        query.check()
        parts = query.parts()
        spec = ResizeSpec.of(self.settings)
        images = {i: prepare_file(p.value, spec) for i, p in enumerate(parts) if p.kind == "image"}
        info = self._table_info()
        stored: dict[int, StoredImage] = {}
        given_with_like = len(parts) - len(query.more)  # the parts before are --like's
        for i, part in enumerate(parts):
            if part.kind == "like":
                found = self._find(part.value)
                if found is not None:
                    stored[i] = found
                else:
                    images[i] = self._prepare_unindexed(part, spec, i < given_with_like)
        vector = self._vector(parts, images, stored)
        k = top_k or self.settings.top_k
        matches = self.store.rows.nearest(vector, k, filters)
        warnings: list[str] = []

        def write_query(folder: Path) -> None:
            pictured = next((i for i in sorted({*images, *stored}) if parts[i].sign > 0), None)
            if pictured in stored:
                warnings.extend(copy_stored_query(stored[pictured], folder))
            elif pictured is not None:
                save_jpeg(images[pictured], folder / QUERY_IMAGE_FILE)
            words = next((p.value for p in parts if p.kind == "text" and p.sign > 0), None)
            if words is not None:
                (folder / QUERY_TEXT_FILE).write_text(words + "\n", encoding="utf-8")
            record = {"parts": [p.record() for p in parts], "filters": filters_record(filters),
                      "top_k": k}
            (folder / QUERY_RECORD_FILE).write_text(
                json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )

        folder, more = write_result_folder(self.settings, matches, info.images, write_query)
        return SearchResult(folder, info.images, matches, warnings + more, query.describe())

    def _prepare_unindexed(self, part: QueryPart, spec: ResizeSpec, like: bool) -> Image.Image:
        """A `like` file that is not indexed, prepared as an image; an error names the file
        (and for an added or subtracted part, its option)."""
        try:
            return prepare_file(part.value, spec)
        except ImageError as exc:
            if like:  # --like: the command line names the option
                raise ImageError(f"it is not indexed, and {exc}") from exc
            option = "--and" if part.sign > 0 else "--not"
            raise ConfigError(
                f"cannot use {option} {display_path(part.value)}: it is not indexed, and {exc}"
            ) from exc

    def _find(self, like: str) -> StoredImage | None:
        return find_stored(self.store, like)

    def _vector(
        self,
        parts: list[QueryPart],
        images: dict[int, Image.Image],
        stored: dict[int, StoredImage],
    ) -> np.ndarray:
        """Each part's unit vector (images and texts embedded one at a time, as a single
        query always was), then their normalised weighted sum; one part is its own vector."""
        vectors = {i: found.embedding for i, found in stored.items()}
        for i, image in images.items():
            vectors[i] = self.embedder.embed_images([image])[0]
        for i, part in enumerate(parts):
            if part.kind == "text":
                vectors[i] = self.embedder.embed_texts([part.value])[0]
        if len(parts) == 1:
            return vectors[0]
        ordered = [vectors[i] for i in range(len(parts))]
        return weighted_sum(ordered, [part.sign * part.weight for part in parts])

    def by_image(
        self, image_path: Path, top_k: int | None = None, filters: Filters = NO_FILTERS
    ) -> SearchResult:
        """Search with an image file: preprocessed and embedded exactly as indexed images are."""
        return self.search(Query(image=image_path), top_k, filters)

    def by_text(
        self, text: str, top_k: int | None = None, filters: Filters = NO_FILTERS
    ) -> SearchResult:
        """Search with a text query through the model's text tower."""
        return self.search(Query(text=text), top_k, filters)


def find_stored(store: Store, like: str) -> StoredImage | None:
    """The stored row of a file named as given, absolute, or with links resolved."""
    for path in dict.fromkeys([like, os.path.abspath(like), os.path.realpath(like)]):
        stored = store.rows.find(path)
        if stored is not None:
            return stored
    return None


def copy_stored_query(stored: StoredImage, folder: Path) -> list[str]:
    """query.jpg of a `like` query: the stored processed JPEG of that file."""
    processed = Path(stored.processed_path)
    if processed.is_file():
        shutil.copyfile(processed, folder / QUERY_IMAGE_FILE)
        return []
    warning = (
        f"the processed JPEG of {display_path(stored.file_path)} is gone; no query.jpg "
        "written (image-search index makes it again)"
    )
    log.warning(warning)
    return [warning]
