"""The result folder of a search (seed step ⑪): <output>/<yyyymmdd-hhmmss> with the
settings, the ranked results, the query and a copy of the best match."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Settings
from .scan import display_path
from .store import Match, StoredImage

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
QUERY_IMAGE_FILE = "query.jpg"
QUERY_TEXT_FILE = "query.txt"
QUERY_RECORD_FILE = "query.json"  # every part with its sign and weight, and the filters
RESERVED_NAMES = {CONFIG_FILE, RESULTS_FILE, QUERY_IMAGE_FILE, QUERY_TEXT_FILE, QUERY_RECORD_FILE}


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
