"""Walking the source tree: image extensions, hidden entries, symlink loops, stat."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# Camera RAW containers LibRaw reads (Adobe, Canon, Nikon, Sony, Fujifilm, Olympus/OM,
# Panasonic, Pentax, Samsung, Leica, Hasselblad, Phase One, Sigma, Kodak, Minolta).
RAW_EXTENSIONS = frozenset(
    {
        *("dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "orf", "rw2"),
        *("pef", "srw", "rwl", "3fr", "fff", "iiq", "x3f", "kdc", "dcr", "mrw", "erf", "mos"),
    }
)
# What a camera or phone writes beside a RAW file as its own rendering of the same shot.
RENDERED_EXTENSIONS = frozenset({"jpg", "jpeg", "heic", "heif"})
IMAGE_EXTENSIONS = (
    frozenset(
        {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif", "avif", "jxl"}
    )
    | RAW_EXTENSIONS
)


# The table keeps mtimes as bigint nanoseconds, from 1677 to 2262; ext4 dates files up to
# 2446. A file dated outside is stored with its mtime clamped to the nearest end.
MTIME_NS_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute, as reached from the source directory (symlinks not resolved)
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def mtime_clamped(self) -> bool:
        return self.mtime_ns in MTIME_NS_RANGE


def display_path(path: str) -> str:
    """A path as valid UTF-8 text, for people, JSON and the database: a byte of a name that
    is not UTF-8 (old archives, Latin-1 cameras) is written as \\xNN. Valid names are unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_hash(file_path: str) -> str:
    """The seed's duplicate key: a hash of the file's path and name (its exact bytes)."""
    return hashlib.sha256(os.fsencode(file_path)).hexdigest()


def folder_prefix(folder: str) -> str:
    """What the paths of files inside `folder` start with."""
    return folder.rstrip(os.sep) + os.sep


def _extension(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    return extension.lower() if dot and stem else ""


def is_image_name(name: str) -> bool:
    return _extension(name) in IMAGE_EXTENSIONS


def is_raw_name(name: str) -> bool:
    return _extension(name) in RAW_EXTENSIONS


def paired_out(names: list[str], raw_with_jpeg: str) -> set[str]:
    """The names in one folder that raw-with-jpeg leaves out: RAW files with a JPEG (or HEIC)
    of the same stem beside them (`skip-raw`), or those JPEGs (`skip-jpeg`). Stems compare
    without case: cameras write IMG_0001.CR2 beside IMG_0001.JPG."""
    if raw_with_jpeg == "both":
        return set()
    drop, keep = (
        (RAW_EXTENSIONS, RENDERED_EXTENSIONS)
        if raw_with_jpeg == "skip-raw"
        else (RENDERED_EXTENSIONS, RAW_EXTENSIONS)
    )
    kept_stems = {_stem(name) for name in names if _extension(name) in keep}
    return {name for name in names if _extension(name) in drop and _stem(name) in kept_stems}


def _stem(name: str) -> str:
    return name.rpartition(".")[0].lower()


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def scan_images(
    root: Path, exclude: Iterable[Path] = (), raw_with_jpeg: str = "skip-raw"
) -> Iterator[ScannedFile]:
    """Every image file under `root`, hidden files and folders skipped, symlinks followed once,
    the folders in `exclude` (our own output and data) left out, and RAW+JPEG pairs thinned
    as `raw_with_jpeg` says (see paired_out).

    Files that vanish or cannot be stat'ed during the walk are left out: they are not there.
    """
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        raise ConfigError(f"configuration key 'source-directory': {top} is not a directory")
    # Marking excluded folders as seen makes the walk skip them like a second link.
    seen_directories = {i for i in map(_identity, exclude) if i is not None}
    for directory, subdirectories, files in os.walk(top, followlinks=True):
        identity = _identity(directory)
        if identity is None or identity in seen_directories:  # gone, a loop, or excluded
            subdirectories[:] = []
            continue
        seen_directories.add(identity)
        subdirectories[:] = sorted(d for d in subdirectories if _visible(d))
        extensions = {name: _extension(name) for name in files if _visible(name)}
        images = sorted(name for name, ext in extensions.items() if ext in IMAGE_EXTENSIONS)
        # A folder without RAW files (most) pairs nothing: one cheap pass.
        has_raw = any(ext in RAW_EXTENSIONS for ext in extensions.values())
        left_out = paired_out(images, raw_with_jpeg) if has_raw else set()
        for name in images:
            if name in left_out:
                continue
            found = stat_file(os.path.join(directory, name))
            if found is not None:
                yield found


def stat_file(path: str) -> ScannedFile | None:
    """The file's size and mtime; None if it is gone or cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    mtime_ns = stat.st_mtime_ns
    low, high = MTIME_NS_RANGE
    if not low <= mtime_ns <= high:  # a date a bigint cannot hold (ext4 allows 2446)
        mtime_ns = min(max(mtime_ns, low), high)
    return ScannedFile(path=path, size=stat.st_size, mtime_ns=mtime_ns)
