"""A query: preprocess and embed it like an indexed image (or embed text), rank, write the
result folder (seed step ⑪)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ConfigError, ImageSearchError
from .images import ResizeSpec, prepare_file, save_jpeg
from .models import Embedder
from .scan import display_path
from .store import Match, Store, TableInfo, VectorSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
QUERY_IMAGE_FILE = "query.jpg"
QUERY_TEXT_FILE = "query.txt"
RESERVED_NAMES = {CONFIG_FILE, RESULTS_FILE, QUERY_IMAGE_FILE, QUERY_TEXT_FILE}


@dataclass
class SearchResult:
    output_dir: Path | None  # None with save-results false
    searched: int
    results: list[Match]
    warnings: list[str]

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
    settings: Settings, matches: list[Match], searched: int, write_query: Any
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
        info.spec.refuse_other(VectorSpec.of(self.settings), self.store.table)
        return info

    def by_image(self, image_path: Path, top_k: int | None = None) -> SearchResult:
        """Search with an image file: preprocessed and embedded exactly as indexed images are."""
        image = prepare_file(image_path, ResizeSpec.of(self.settings))
        info = self._table_info()
        vector = self.embedder.embed_images([image])[0]
        matches = self.store.rows.nearest(vector, top_k or self.settings.top_k)
        folder, warnings = write_result_folder(
            self.settings,
            matches,
            info.images,
            lambda f: save_jpeg(image, f / QUERY_IMAGE_FILE),
        )
        return SearchResult(folder, info.images, matches, warnings)

    def by_text(self, text: str, top_k: int | None = None) -> SearchResult:
        """Search with a text query through the model's text tower."""
        if not text.strip():
            raise ConfigError("the text query is empty")
        info = self._table_info()
        vector = self.embedder.embed_texts([text])[0]
        matches = self.store.rows.nearest(vector, top_k or self.settings.top_k)
        folder, warnings = write_result_folder(
            self.settings,
            matches,
            info.images,
            lambda f: (f / QUERY_TEXT_FILE).write_text(text + "\n", encoding="utf-8"),
        )
        return SearchResult(folder, info.images, matches, warnings)
