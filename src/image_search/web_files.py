"""The only way a file leaves the server: through the page, originals ("Open original",
"Download original"), thumbnails (the processed JPEGs of the gallery, the best match and the
Duplicates tab) and uploaded query images (or their previews); and the copies a search
writes into its result folder (the best match's original, query.jpg of a `like` query).

Each file is checked when it is asked for, not only when it was indexed: a regular file (never
a FIFO or a device), reached without a symlink that leads out of its folder (source-directory
for originals, the processed folder for thumbnails, the page's upload folder for uploads), and
for an original still the file that was indexed (size and mtime as stored, else the same
content hash). What passes is copied, from the very file descriptor that was checked, into the
page's own cache (or the result folder); Gradio serves nothing else. The cache is a folder
under data-directory that only its owner can enter, bounded by page-cache-mb (the files handed
out longest ago go first, never one a page still shows); it goes when the page stops, and a
crashed run's is removed at the next start."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from .config import Settings
from .errors import ImageSearchError
from .scan import display_path, folder_prefix
from .store import StoredFile

log = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"  # Gradio's own limit on an upload
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # ours, on what a search may read from the upload folder
CACHE_FOLDER = "page-cache"  # under data-directory
GRADIO_FOLDER = "gradio"  # under data-directory: what Gradio makes for itself when imported
LOCK_NAME = ".in-use"  # held (flock) by the run that owns a cache folder
SWEEP_NAME = ".sweep"  # held while leftovers are removed and a new folder is made
COPY_CHUNK = 1 << 20
COPYING_PREFIX = ".copy-"  # a copy being written
MB = 1_000_000  # the megabyte of page-cache-mb and min-free-mb, as status counts sizes
# Pages whose shown files the cache keeps (see FileGate.show); a page heard from less
# recently than this many others loses its hold (an API client never says it has gone).
MAX_PAGES = 64
# Longer paths than this are no path on Linux (PATH_MAX).
MAX_PATH_BYTES = 4096
# Whatever is wrong with a query image's path, the answer is the same: it must not tell a
# client whether some file exists on the server.
NOT_UPLOADED = "that image is not one uploaded to this page (or it has gone): upload it again"
GONE, OUTSIDE, NOT_REGULAR, CHANGED = "gone", "outside", "not a regular file", "changed"


class Refused(ImageSearchError):
    """A file the page will not serve or read; `reason` is GONE, OUTSIDE, NOT_REGULAR or
    CHANGED (what the page says of each: web.REFUSED_MESSAGES)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PageCache:
    """The page's cache: <data-directory>/page-cache/<run>/, mode 0700. Gradio keeps uploads
    there and serves from it (GRADIO_TEMP_DIR, read by Gradio when the page's blocks and app
    are made, so this is opened before them). One page per process."""

    def __init__(self, data_directory: Path) -> None:
        parent = data_directory.resolve() / CACHE_FOLDER
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent.chmod(0o700)
        with open(parent / SWEEP_NAME, "a") as sweep:
            fcntl.flock(sweep, fcntl.LOCK_EX)  # no other start removes ours before we hold it
            remove_leftovers(parent)
            self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=parent))  # 0700
            self._lock: BinaryIO | None = open(self.folder / LOCK_NAME, "wb")  # noqa: SIM115
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._previous = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(self.folder)

    def remove(self) -> None:
        """Delete the cache and everything in it (uploads, copies); safe to call twice."""
        if self._lock is None:
            return
        if os.environ.get("GRADIO_TEMP_DIR") == str(self.folder):
            if self._previous is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._previous
        shutil.rmtree(self.folder, ignore_errors=True)
        self._lock.close()
        self._lock = None


def gradio_files_in(data_directory: Path) -> None:
    """Call before gradio is imported: Gradio fixes a temp folder of its own when imported
    and makes folders there that the page never uses; <data-directory>/gradio rather than the
    system's temp folder (a GRADIO_TEMP_DIR the user set is kept). Uploads go to PageCache."""
    folder = data_directory.resolve() / GRADIO_FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(folder))


def remove_leftovers(parent: Path) -> None:
    """Remove the cache folders of runs that are over (crashed, killed): no process holds
    their lock any more."""
    for folder in parent.iterdir():
        if folder.is_dir() and not folder.is_symlink() and not _in_use(folder):
            log.debug("removing a stopped page's cache %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _in_use(folder: Path) -> bool:
    try:
        with open(folder / LOCK_NAME, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: a folder its run never finished making
        return False
    return False


def unusable_path(text: str) -> str | None:
    """Why `text` cannot name a file here (a client sends any text), or None."""
    if "\0" in text:
        return "it holds a NUL character"
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        return "it holds characters no file name can"
    if len(encoded) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    return None


def is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder_prefix(folder))


@contextmanager
def open_checked(path: str, folder: str) -> Iterator[tuple[int, os.stat_result]]:
    """An open descriptor of `path` and its stat, if the file is a regular file inside
    `folder` (a resolved path) however it is reached; else Refused."""
    if unusable_path(path):
        raise Refused(GONE)
    real = os.path.realpath(path)
    if not is_inside(real, folder):
        raise Refused(OUTSIDE)
    try:  # O_NOFOLLOW: no link swapped in since; O_NONBLOCK: a FIFO does not hang the open
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise Refused(GONE) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(NOT_REGULAR)
        if not is_inside(_opened_path(fd, real), folder):  # a folder on the way was swapped
            raise Refused(OUTSIDE)
        yield fd, info
    finally:
        os.close(fd)


def _opened_path(fd: int, fallback: str) -> str:
    """Where an open file really is (Linux says it in /proc); elsewhere the path opened."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


@contextmanager
def open_original(
    stored: StoredFile, source: str
) -> Iterator[tuple[int, os.stat_result, str | None]]:
    """An indexed original opened as open_checked opens it (inside `source`, a resolved
    path), its stat, and the content hash its copy must have: None when its size and mtime
    are as stored, else the stored hash (touched only, or replaced?)."""
    with open_checked(stored.file_path, source) as (fd, info):
        same = (info.st_size, info.st_mtime_ns) == (stored.size, stored.mtime_ns)
        yield fd, info, None if same else stored.content_hash


def copied(fd: int, folder: Path, expected: str | None = None) -> tuple[Path, str]:
    """An open file copied into a new file in `folder`, and its sha256. With `expected`,
    only if that is its hash: else Refused(CHANGED), and no file is left."""
    hashed = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=COPYING_PREFIX, delete=False) as out:
        try:
            while chunk := os.read(fd, COPY_CHUNK):
                hashed.update(chunk)
                out.write(chunk)
        except BaseException:
            os.unlink(out.name)
            raise
    digest = hashed.hexdigest()
    if expected is not None and digest != expected:
        os.unlink(out.name)
        raise Refused(CHANGED)
    return Path(out.name), digest


def copy_original(stored: StoredFile, source_directory: Path, destination: Path) -> None:
    """An indexed original copied to `destination` (its modification time kept), after the
    checks serving it passes (open_original); else Refused, and nothing is written."""
    with open_original(stored, os.path.realpath(source_directory)) as (fd, info, expected):
        temporary, _ = copied(fd, destination.parent, expected)
    os.replace(temporary, destination)
    os.utime(destination, ns=(info.st_atime_ns, info.st_mtime_ns))


def copy_inside(path: str, folder: Path, destination: Path) -> None:
    """A file of ours (a processed JPEG) copied to `destination` if it is a regular file
    inside `folder` however it is reached; else Refused, and nothing is written."""
    with open_checked(path, os.path.realpath(folder)) as (fd, _):
        temporary, _ = copied(fd, destination.parent)
    os.replace(temporary, destination)


class FileGate:
    """Checks and copies every file the page hands out (see the module's docstring)."""

    def __init__(self, settings: Settings, cache: PageCache) -> None:
        self.source = os.path.realpath(settings.source_directory)
        self.processed = os.path.realpath(settings.processed_directory)
        self.cache = cache
        self.limit = settings.page_cache_mb * MB
        self._copies: dict[tuple[int, ...], tuple[Path, str]] = {}  # by file identity
        self._used: dict[str, float] = {}  # when each file was last handed out
        # What each page (a session) shows now, by view: never evicted. The pages heard from
        # most recently last; beyond MAX_PAGES the oldest lose their hold.
        self._shown: OrderedDict[str, dict[str, frozenset[str]]] = OrderedDict()
        self._previews: dict[str, str] = {}  # a preview's path: the upload it shows
        self._lock = threading.Lock()

    def preview_folder(self, upload: Path) -> Path:
        """Where the preview of an upload goes (a folder of the cache of its own)."""
        digest = hashlib.sha256(os.fsencode(upload)).hexdigest()
        folder = self.cache.folder / f"preview-{digest[:32]}"
        folder.mkdir(exist_ok=True)
        return folder

    def previewed(self, preview: Path, upload: Path) -> Path:
        """`preview` (written in preview_folder) now stands for `upload` on the page."""
        with self._lock:
            self._previews[str(preview)] = str(upload)
        return self._handed_out(preview)

    def query_image(self, payload: Any) -> tuple[Path | None, Path | None]:
        """The upload a query image stands for, and the file the query box shows: the
        upload itself, or its preview (upload() checks both)."""
        shown = self.upload(payload)
        with self._lock:
            upload = self._previews.get(str(shown))
        return (self.upload({"path": upload}) if upload else shown), shown

    def show(self, session: str | None, view: str, files: Iterable[Path | None]) -> None:
        """What one page now shows in one of its views (the results, the selected result's
        original, the Duplicates tab, the query image), in place of what that view showed;
        then the cache is trimmed to its bound."""
        shown = frozenset(str(path) for path in files if path is not None)
        with self._lock:
            views = self._shown.pop(session or "", {})
            views[view] = shown
            self._shown[session or ""] = views
            while len(self._shown) > MAX_PAGES:
                self._shown.popitem(last=False)
        self.trim()

    def closed(self, session: str | None) -> None:
        """A page was closed: what it showed may go."""
        with self._lock:
            self._shown.pop(session or "", None)

    def trim(self) -> None:
        """Delete the files handed out longest ago (uploads: by when they came) until the
        cache is within page-cache-mb, never one that a page still shows."""
        with self._lock:
            shown = {path for views in self._shown.values() for files in views.values()
                     for path in files}
            used = dict(self._used)
        files = list(self._cached_files())
        total = sum(size for _, size, _ in files)
        for path, size, _ in sorted(files, key=lambda f: used.get(f[0], f[2])):
            if total <= self.limit:
                break
            if path in shown:
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
                with contextlib.suppress(OSError):  # its folder, once empty
                    os.rmdir(os.path.dirname(path))
            with self._lock:
                self._used.pop(path, None)

    def _cached_files(self) -> Iterator[tuple[str, int, float]]:
        """Path, size and modification time of each file in the cache that may go: not the
        lock, nor a copy being written."""
        for folder, _, names in os.walk(self.cache.folder):
            for name in names:
                if name == LOCK_NAME or name.startswith(COPYING_PREFIX):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    if stat.S_ISREG(info.st_mode):
                        yield path, info.st_size, info.st_mtime

    def _handed_out(self, path: Path) -> Path:
        with self._lock:
            self._used[str(path)] = time.time()
        return path

    def original(self, stored: StoredFile) -> Path:
        """A copy of an indexed file's original, if it is still the file that was indexed."""
        with open_original(stored, self.source) as (fd, info, expected):
            return self._copy(fd, info, os.path.basename(stored.file_path), expected)

    def thumbnail(self, processed_path: str) -> Path:
        """A copy of a processed JPEG; a grey placeholder (and a log line) if it cannot be
        served, so that the gallery keeps one picture per result."""
        try:
            with open_checked(processed_path, self.processed) as (fd, info):
                return self._copy(fd, info, os.path.basename(processed_path))
        except Refused as refused:
            log.warning("thumbnail %s not served: %s", display_path(processed_path), refused)
            return self._placeholder()

    def upload(self, payload: Any) -> Path | None:
        """The path of a query image the client uploaded to this page (None for no image).
        Any other path is refused with the same words, whether or not it exists."""
        if not payload:
            return None
        path = payload.get("path") if isinstance(payload, dict) else payload
        if not isinstance(path, str) or not path:
            raise ImageSearchError(NOT_UPLOADED)
        try:
            with open_checked(path, str(self.cache.folder)) as (_, info):
                if info.st_size > MAX_UPLOAD_BYTES:
                    raise ImageSearchError(f"that image is over the {MAX_UPLOAD} upload limit")
        except Refused:
            raise ImageSearchError(NOT_UPLOADED) from None
        return self._handed_out(Path(os.path.realpath(path)))

    def _copy(self, fd: int, info: os.stat_result, name: str, expected: str | None = None) -> Path:
        """The cached copy of an open file, <cache>/<sha256>/<name>, made once per file
        version (a second search adds nothing). With `expected`, only if its content hash is
        that (else Refused, and no copy is left)."""
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            copy, digest = self._copies.get(identity, (None, None))
        if copy is None or copy.name != display_path(name) or not copy.is_file():
            copy, digest = self._write(fd, name, expected)
            with self._lock:
                self._copies[identity] = (copy, digest)
        if expected is not None and digest != expected:
            raise Refused(CHANGED)
        return self._handed_out(copy)

    def _write(self, fd: int, name: str, expected: str | None) -> tuple[Path, str]:
        temporary, digest = copied(fd, self.cache.folder, expected)
        folder = self.cache.folder / digest
        folder.mkdir(exist_ok=True)
        copy = folder / display_path(name)
        os.replace(temporary, copy)
        return copy, digest

    def _placeholder(self) -> Path:
        path = self.cache.folder / "unavailable.png"
        if not path.is_file():
            Image.new("RGB", (4, 3), (160, 160, 160)).save(path)
        return path
