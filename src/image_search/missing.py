"""Files an index run did not find, as a person reads about them: which folders went missing
whole (a share not mounted, a folder moved away) and one note for the summary."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .scan import ScannedFile, display_path, folder_prefix
from .store import StoredFile, TableInfo

# The summary names at most this many missing folders; --json lists them all.
FOLDERS_NAMED = 3


@dataclass(frozen=True)
class MissingFolder:
    path: str
    images: int  # stored images of this folder, all missing

    def to_json(self) -> dict[str, Any]:
        return {"path": display_path(self.path), "images": self.images}


def missing_folders(
    root: str, missing: Sequence[StoredFile], scanned: Iterable[ScannedFile]
) -> list[MissingFolder]:
    """The highest folders (`root` included) in which no image was found and only missing
    ones are stored, with how many each holds: what vanished whole."""
    if not missing:  # the usual run: no need to map every folder that holds an image
        return []
    inside = folder_prefix(root)
    found = _folders_holding(root, scanned)
    tops: Counter[str] = Counter()
    for row in missing:
        folder, top = os.path.dirname(row.file_path), None
        while folder not in found and (folder == root or folder.startswith(inside)):
            top = folder
            if folder == root:
                break
            folder = os.path.dirname(folder)
        if top is not None:
            tops[top] += 1
    return [MissingFolder(path, count) for path, count in sorted(tops.items())]


def _folders_holding(root: str, scanned: Iterable[ScannedFile]) -> set[str]:
    """Every folder from `root` down that holds a scanned image, directly or below."""
    found: set[str] = set()
    for file in scanned:
        folder = os.path.dirname(file.path)
        while folder not in found and len(folder) >= len(root):
            found.add(folder)
            folder = os.path.dirname(folder)
    return found


def missing_folders_note(folders: list[MissingFolder], words: Mapping[str, str]) -> str:
    """`; missing folders: /mnt/a (3), …` in the summary's `words` ("" for none)."""
    if not folders:
        return ""
    named = [f"{display_path(f.path)} ({f.images})" for f in folders[:FOLDERS_NAMED]]
    more = len(folders) - FOLDERS_NAMED
    note = words["missing_folders"].format(folders=", ".join(named))
    return note + (words["more_folders"].format(count=more) if more > 0 else "")


def how_long_kept(keep_missing: bool, found_any: bool) -> str:
    """Until when the rows of missing files are kept: the summary's word for it."""
    if keep_missing:
        return "kept_by_flag"
    if not found_any:
        return "kept_until_prune"
    return "kept_for_days"


def all_missing(table: str, info: TableInfo | None) -> str | None:
    """The one line for a table whose every stored image is missing, if it is so: a search
    then has nothing to see, and "nothing indexed yet" would be wrong."""
    if info is None or info.images or not info.missing:
        return None
    return (
        f"all {info.missing} images stored in table '{table}' are missing (a drive or share "
        "not mounted?); searches see them again once `image-search index` finds them"
    )
