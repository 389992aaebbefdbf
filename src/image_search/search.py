"""A query: preprocess and embed it like an indexed image (or embed text), rank, write the
result folder. What the user asks is parsed in query.py; the result folder is
written by result_folder.py."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .config import Settings
from .errors import ConfigError, ImageError, ImageSearchError
from .missing import all_missing
from .models import Embedder
from .models.precision import planned_spec
from .query import Query, QueryPart, filters_record, weighted_sum
from .result_folder import (
    QUERY_IMAGE_FILE,
    QUERY_RECORD_FILE,
    QUERY_TEXT_FILE,
    copy_stored_query,
    result_record,
    write_result_folder,
)
from .scan import display_path
from .store import NO_FILTERS, Filters, Match, Store, StoredFile, StoredImage, TableInfo
from .words_search import no_words_warning, search_words, words_record

if TYPE_CHECKING:
    from .images import ResizeSpec

UNUSABLE_VECTORS = (
    "{count} stored image(s) left out of the results: their vectors have no direction; "
    "run image-search index --reindex"
)


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
                all_missing(self.store.table, info)
                or f"no images are indexed in table '{self.settings.table_name}' yet; "
                "run `image-search index` (or press Rescan on the page) first"
            )
        wanted = planned_spec(self.settings, self.embedder.decision)
        info.spec.refuse_other(wanted, self.store.table)
        return info

    def search(
        self, query: Query, top_k: int | None = None, filters: Filters = NO_FILTERS
    ) -> SearchResult:
        """Any query, filtered: images are preprocessed and embedded exactly as indexed images
        are; an indexed `like` file is searched by its stored vector (no model); several parts
        are one vector, their normalised weighted sum."""
        query.check()
        parts = query.parts()
        images: dict[int, Image.Image] = {}
        spec: Any = None  # a ResizeSpec wherever a part is a file
        if any(p.kind != "text" for p in parts):  # the decoders are not imported for texts
            from .images import ResizeSpec, prepare_file

            spec = ResizeSpec.of(self.settings)
            images = {
                i: prepare_file(p.value, spec) for i, p in enumerate(parts) if p.kind == "image"
            }
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
        described = query.describe()
        vector = self._vector(parts, images, stored, described) if parts else None
        k = top_k or self.settings.top_k
        warnings: list[str] = []
        if query.words is not None:  # by the words in the photos (and the rest, fused)
            matches = search_words(self.store, query.words, k, filters, vector)
            warnings += no_words_warning(self.store) if not matches else []
        else:
            assert vector is not None  # query.check(): some part is added
            matches, warnings = finite_matches(self.store.rows.nearest(vector, k, filters))

        def write_query(folder: Path) -> None:
            pictured = next((i for i in sorted({*images, *stored}) if parts[i].sign > 0), None)
            if pictured in stored:
                warnings.extend(copy_stored_query(stored[pictured], self.settings, folder))
            elif pictured is not None:
                from .images import save_jpeg

                save_jpeg(images[pictured], folder / QUERY_IMAGE_FILE)
            words = next((p.value for p in parts if p.kind == "text" and p.sign > 0), None)
            if words is not None:
                (folder / QUERY_TEXT_FILE).write_text(words + "\n", encoding="utf-8")
            record = {"parts": [p.record() for p in parts], "filters": filters_record(filters),
                      "top_k": k}
            if query.words is not None:
                record["words"] = words_record(query.words, fused_with_vector=bool(parts))
            (folder / QUERY_RECORD_FILE).write_text(
                json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )

        best = self._stored_file(matches[0].file_path) if matches else None
        folder, more = write_result_folder(self.settings, matches, info.images, write_query, best)
        return SearchResult(folder, info.images, matches, warnings + more, described)

    def _prepare_unindexed(self, part: QueryPart, spec: ResizeSpec, like: bool) -> Image.Image:
        """A `like` file that is not indexed, prepared as an image; an error names the file
        (and for an added or subtracted part, its option)."""
        from .images import prepare_file

        try:
            return prepare_file(part.value, spec)
        except ImageError as exc:
            if like:  # --like: the command line names the option
                raise ImageError(f"it is not indexed, and {exc}") from exc
            option = "--and" if part.sign > 0 else "--not"
            raise ConfigError(
                f"cannot use {option} {display_path(part.value)}: it is not indexed, and {exc}"
            ) from exc

    def _stored_file(self, file_path: str) -> StoredFile | None:
        """The row of a file as indexed (size, mtime, content hash): what its copy is checked
        against."""
        if not self.settings.save_results:
            return None
        return self.store.rows.stored_files_at([file_path]).get(file_path)

    def _find(self, like: str) -> StoredImage | None:
        return find_stored(self.store, like)

    def _vector(
        self,
        parts: list[QueryPart],
        images: dict[int, Image.Image],
        stored: dict[int, StoredImage],
        described: str,
    ) -> np.ndarray:
        """Each part's unit vector (images and texts embedded one at a time, as a single
        query always was), then their normalised weighted sum; one part is its own vector.
        Refused (CancelledQuery) when the parts cancel out or a vector is not usable."""
        vectors = {i: found.embedding for i, found in stored.items()}
        for i, image in images.items():
            vectors[i] = self.embedder.embed_images([image])[0]
        for i, part in enumerate(parts):
            if part.kind == "text":
                vectors[i] = self.embedder.embed_texts([part.value])[0]
        ordered = [vectors[i] for i in range(len(parts))]
        combined = weighted_sum(ordered, [part.signed_weight for part in parts], described)
        if len(parts) == 1 and parts[0].sign > 0:  # (words with only --not parts: negated)
            return vectors[0]
        return combined

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


def finite_matches(matches: list[Match]) -> tuple[list[Match], list[str]]:
    """The matches with a finite score, ranked again, and a warning for any left out: a
    stored vector of zero length (a model's fault) has no cosine similarity to anything."""
    finite = [m for m in matches if math.isfinite(m.score)]
    if len(finite) == len(matches):
        return matches, []
    warning = UNUSABLE_VECTORS.format(count=len(matches) - len(finite))
    return [dataclasses.replace(m, rank=rank) for rank, m in enumerate(finite, start=1)], [warning]


def find_stored(store: Store, like: str) -> StoredImage | None:
    """The stored row of a file named as given, absolute, or with links resolved."""
    for path in dict.fromkeys([like, os.path.abspath(like), os.path.realpath(like)]):
        stored = store.rows.find(path)
        if stored is not None:
            return stored
    return None
