"""The result folder of a search: <output>/<yyyymmdd-hhmmss> with the
settings, the ranked results, the query and a copy of the best match."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Settings
from .scan import display_path
from .status import human_size
from .store import Match, StoredFile, StoredImage
from .web_files import (
    CHANGED,
    GONE,
    MB,
    NOT_REGULAR,
    OUTSIDE,
    Refused,
    copy_inside,
    copy_original,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
QUERY_IMAGE_FILE = "query.jpg"
QUERY_TEXT_FILE = "query.txt"
QUERY_RECORD_FILE = "query.json"  # every part with its sign and weight, and the filters
RESERVED_NAMES = {CONFIG_FILE, RESULTS_FILE, QUERY_IMAGE_FILE, QUERY_TEXT_FILE, QUERY_RECORD_FILE}
# <yyyymmdd-hhmmss>, or -2, -3, ... for a second search in the same second.
RESULT_FOLDER_NAME = re.compile(r"(\d{8}-\d{6})(?:-(\d+))?")
# Why the best match's original was not copied, by web_files' reason.
NOT_COPIED = {
    GONE: "original file is gone ({path})",
    OUTSIDE: "original file not copied ({path}): it lies outside source-directory, or a link "
    "leads there",
    NOT_REGULAR: "original file not copied ({path}): it is no longer a regular file",
    CHANGED: "original file not copied ({path}): it has changed since it was indexed "
    "(image-search index takes the new one)",
}
NOT_WRITTEN = (
    "no result folder written: only {free} free on the file system of {output}, and "
    "min-free-mb asks to leave {floor} MB; free some space, or lower min-free-mb"
)


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


def copy_best_match(
    match: Match, stored: StoredFile | None, settings: Settings, folder: Path
) -> str | None:
    """Copy the original file (name and format kept) through the checks serving it passes
    (web_files); its processed JPEG if the original has gone or is refused. Returns a
    warning for the user, or None."""
    name = match.file_name if match.file_name not in RESERVED_NAMES else f"match-{match.file_name}"
    reason = GONE
    if stored is not None:  # None: its row went since the search
        try:
            copy_original(stored, settings.source_directory, folder / name)
            return None
        except Refused as refused:
            reason = refused.reason
    why = NOT_COPIED[reason].format(path=display_path(match.file_path))
    try:
        processed = folder / f"{Path(name).stem}.processed.jpg"
        copy_inside(match.processed_path, settings.processed_directory, processed)
    except Refused:
        return f"{why}, and its processed JPEG cannot be copied either; nothing copied"
    return f"{why}; copied its processed JPEG instead"


def free_space_warning(settings: Settings, needed: int) -> str | None:
    """Why no result folder can be written (less than min-free-mb would be left on the
    output's file system once `needed` bytes are), or None."""
    floor = settings.min_free_mb * MB
    free = shutil.disk_usage(existing_parent(settings.output_directory)).free
    if free - needed >= floor:
        return None
    return NOT_WRITTEN.format(
        free=human_size(free), output=settings.output_directory, floor=settings.min_free_mb
    )


def existing_parent(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (where it would be made)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_result_folder(
    settings: Settings,
    matches: list[Match],
    searched: int,
    write_query: Callable[[Path], Any],
    best: StoredFile | None = None,
) -> tuple[Path | None, list[str]]:
    """The result folder and any warnings; nothing with save-results false,
    nor when the output's file system is short of space (a warning says so). `best` is the
    stored row of the best match, whose original is copied. Older result folders go as
    keep-results says."""
    if not settings.save_results:
        return None, []
    if short := free_space_warning(settings, best.size if best else 0):
        return None, [short]
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
        warning = copy_best_match(matches[0], best, settings, folder)
        if warning:
            log.warning(warning)
            warnings.append(warning)
    if settings.keep_results is not None:
        remove_old_results(settings.output_directory, settings.keep_results)
    return folder, warnings


def remove_old_results(output_directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` result folders: only folders named as image-search
    names them that hold a results.jsonl, never a link or anything else a user keeps there."""
    ours = []
    for entry in output_directory.resolve().iterdir():
        named = RESULT_FOLDER_NAME.fullmatch(entry.name)
        if named and entry.is_dir() and not entry.is_symlink() and (entry / RESULTS_FILE).is_file():
            ours.append(((named[1], int(named[2] or 1)), entry))
    for _, folder in sorted(ours)[:-keep]:
        log.debug("removing an old result folder %s (keep-results %d)", folder, keep)
        shutil.rmtree(folder, ignore_errors=True)


def copy_stored_query(stored: StoredImage, settings: Settings, folder: Path) -> list[str]:
    """query.jpg of a `like` query: the stored processed JPEG of that file (checked as the
    page checks a thumbnail: a regular file inside the processed folder)."""
    try:
        copy_inside(stored.processed_path, settings.processed_directory, folder / QUERY_IMAGE_FILE)
        return []
    except Refused:
        warning = (
            f"the processed JPEG of {display_path(stored.file_path)} is gone; no query.jpg "
            "written (image-search index makes it again)"
        )
    log.warning(warning)
    return [warning]
