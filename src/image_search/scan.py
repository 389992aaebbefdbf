"""Walking the source tree: image extensions, hidden entries, NAS and OS side folders and the
user's exclude patterns, symlink loops, stat."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import SYSTEM_FOLDERS, Settings
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


class Exclusions:
    """What a scan leaves out besides hidden entries: patterns of names (matched against every
    folder's and file's name) and of paths (those with a /, matched against the path relative
    to the source folder, where * may span folders), glob-style, compared without case as an
    SMB share or a Windows drive compares names. A scan asks this of every name: plain names
    are one set look-up, globs one regular expression."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        plain: set[str] = set()
        names: list[str] = []
        paths: list[str] = []
        for given in patterns:
            pattern = given.strip().replace(os.sep, "/").rstrip("/")
            if "/" in pattern:  # a path under the source folder; a leading / changes nothing
                paths.append(pattern.lstrip("/"))
            elif GLOB_CHARACTERS.intersection(pattern):
                names.append(pattern)
            elif pattern:
                plain.add(pattern.lower())
        self.patterns = (*sorted(plain), *names, *paths)
        self._plain = frozenset(plain)
        self._names = _one_expression(names)
        self._paths = _one_expression(paths)

    @classmethod
    def of(cls, settings: Settings) -> Exclusions:
        system = SYSTEM_FOLDERS if settings.exclude_system_folders else ()
        return cls([*system, *settings.exclude])

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def kept(self, folder: str, names: Iterable[str]) -> list[str]:
        """The entries of `names` in `folder` (relative to the source folder, "" for the
        source folder itself) that are not left out, in their order."""
        kept = list(names)
        if not self._plain.isdisjoint(map(str.lower, kept)):  # most folders: one quick pass
            kept = [name for name in kept if name.lower() not in self._plain]
        if self._names is not None:
            kept = [name for name in kept if not self._names.match(name)]
        if self._paths is not None:
            prefix = folder.replace(os.sep, "/") + "/" if folder else ""
            kept = [name for name in kept if not self._paths.match(prefix + name)]
        return kept

    def excludes(self, folder: str, name: str) -> bool:
        """Whether the entry `name` in `folder` is left out (see kept)."""
        return not self.kept(folder, [name])

    def excludes_within(self, root: str, path: str) -> bool:
        """Whether `path`, or a folder on the way to it from `root`, is left out."""
        relative = os.path.relpath(path, root)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            return False
        parts = relative.split(os.sep)
        return any(self.excludes(os.sep.join(parts[:i]), parts[i]) for i in range(len(parts)))


GLOB_CHARACTERS = frozenset("*?[")


def _one_expression(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


NO_EXCLUSIONS = Exclusions()


@dataclass
class LeftOut:
    """What a scan left out: folders (each counted once, not what is in them) and image files
    by the exclusions, and the folders it could not list (their files are not known gone)."""

    folders: int = 0
    files: int = 0
    unlisted: list[str] = field(default_factory=list)


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def scan_images(
    root: Path,
    exclude: Iterable[Path] = (),
    raw_with_jpeg: str = "skip-raw",
    exclusions: Exclusions = NO_EXCLUSIONS,
    left_out: LeftOut | None = None,
) -> Iterator[ScannedFile]:
    """Every image file under `root`, hidden files and folders skipped, symlinks followed once,
    the folders in `exclude` (our own output and data) and what `exclusions` names left out
    (counted in `left_out`), and RAW+JPEG pairs thinned as `raw_with_jpeg` says (see
    paired_out).

    Files that vanish or cannot be stat'ed during the walk are left out: they are not there.
    """
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        raise ConfigError(f"configuration key 'source-directory': {top} is not a directory")
    left_out = left_out if left_out is not None else LeftOut()
    inside = len(folder_prefix(top))
    # Marking excluded folders as seen makes the walk skip them like a second link.
    seen_directories = {i for i in map(_identity, exclude) if i is not None}

    def unlisted(error: OSError) -> None:
        if error.filename is not None:
            left_out.unlisted.append(os.fsdecode(error.filename))

    for directory, subdirectories, files in os.walk(top, onerror=unlisted, followlinks=True):
        identity = _identity(directory)
        if identity is None or identity in seen_directories:  # gone, a loop, or excluded
            subdirectories[:] = []
            continue
        seen_directories.add(identity)
        folder = directory[inside:]  # relative to the source folder ("" for itself)
        visible = [d for d in subdirectories if _visible(d)]
        subdirectories[:] = sorted(exclusions.kept(folder, visible))
        left_out.folders += len(visible) - len(subdirectories)
        extensions = {name: _extension(name) for name in files if _visible(name)}
        images = sorted(name for name, ext in extensions.items() if ext in IMAGE_EXTENSIONS)
        if exclusions:
            wanted = exclusions.kept(folder, images)
            left_out.files += len(images) - len(wanted)
            images = wanted
        # A folder without RAW files (most) pairs nothing: one cheap pass.
        has_raw = any(ext in RAW_EXTENSIONS for ext in extensions.values())
        paired = paired_out(images, raw_with_jpeg) if has_raw else set()
        for name in images:
            if name in paired:
                continue
            found = stat_file(os.path.join(directory, name))
            if found is not None:
                yield found


def can_open(path: str) -> bool:
    """Whether this process may open the file at `path` for reading (a permission, say, may
    forbid it); nothing is read, and only a regular file is opened (a FIFO would block)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return True  # not a matter of permission: what is done with it decides
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def stat_file(path: str) -> ScannedFile | None:
    """The file's size and mtime; None if it is gone or cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    mtime_ns = info.st_mtime_ns
    low, high = MTIME_NS_RANGE
    if not low <= mtime_ns <= high:  # a date a bigint cannot hold (ext4 allows 2446)
        mtime_ns = min(max(mtime_ns, low), high)
    return ScannedFile(path=path, size=info.st_size, mtime_ns=mtime_ns)
