"""Opening a user's file for reading, safely: only a regular file is opened (a FIFO, a device,
a socket, or a link to one, is refused unread), within a size cap (max-file-mb), and its bytes
are held whole only when the file is small; a larger one is hashed as it is read and then
decoded from the file itself."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import ImageError
from .scan import is_raw_name

MB = 2**20
# Files up to this size are read once, whole: one read (a NAS is read once), then hashed and
# decoded from memory. Larger ones are read twice (hash, then decode) rather than held.
HELD_WHOLE_BYTES = 32 * MB
CHUNK_BYTES = MB
# Linux shows an open descriptor as a path that LibRaw can open by name: the very file
# checked here, whatever has been renamed since.
OPEN_DESCRIPTOR_PATH = "/proc/self/fd/{}"
KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class SourceFile:
    """A regular file opened for reading (open_source), or bytes already in memory (of_bytes).

    `stream()` gives the content from its start, as many times as asked; `content_hash()`
    the SHA-256 of it."""

    def __init__(
        self,
        path: str,
        size: int,
        data: bytes | None,
        handle: BinaryIO | None = None,
        raw: bool | None = None,
    ) -> None:
        self.path = path
        self.size = size
        self.raw = is_raw_name(path) if raw is None else raw  # a camera RAW file, for LibRaw
        self._data = data
        self._handle = handle
        self._hash: str | None = None

    @classmethod
    def of_bytes(cls, data: bytes, name: str = "", raw: bool | None = None) -> SourceFile:
        """Bytes as a source, named `name` (its extension tells a RAW file, unless `raw`)."""
        return cls(name, len(data), data, raw=raw)

    @property
    def held_bytes(self) -> int:
        """What holding the file costs while it is decoded: its size when read whole."""
        return self.size if self._data is not None else 0

    def content_hash(self) -> str:
        if self._hash is None:
            if self._data is not None:
                self._hash = hashlib.sha256(self._data).hexdigest()
            else:
                self._hash = self._streamed_hash()
        return self._hash

    def stream(self) -> BinaryIO:
        """The content from its first byte (a new view each time for bytes; the file,
        rewound, otherwise)."""
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._handle is not None
        self._handle.seek(0)
        return self._handle

    def data(self) -> bytes:
        """The whole content in memory (read now if it was not held)."""
        if self._data is None:
            self._data = _read_bounded(self.stream(), self.size)
        return self._data

    def libraw_input(self) -> str | BinaryIO:
        """What rawpy.imread should read: the bytes held, else the open file by name where
        the system names open files (LibRaw then reads it without holding it whole)."""
        if self._data is None and self._handle is not None:
            by_name = OPEN_DESCRIPTOR_PATH.format(self._handle.fileno())
            if os.path.exists(by_name):
                return by_name
        return io.BytesIO(self.data())

    def _streamed_hash(self) -> str:
        digest = hashlib.sha256()
        stream, left = self.stream(), self.size
        while chunk := stream.read(min(CHUNK_BYTES, left + 1)):
            digest.update(chunk)
            left -= len(chunk)
            if left < 0:
                raise ImageError("the file grew while it was read; it is read again next run")
        return digest.hexdigest()


@contextmanager
def open_source(
    path: str | Path, max_bytes: int, held_whole_bytes: int = HELD_WHOLE_BYTES
) -> Iterator[SourceFile]:
    """`path` opened for reading if it is a regular file (links followed) of at most
    `max_bytes`; else ImageError, with nothing read. Files of at most `held_whole_bytes` are
    read whole at once (0 for a reader of the header alone)."""
    name = os.fspath(path)
    _refuse_unless_regular(name)
    try:  # O_NONBLOCK: a FIFO swapped in since the check cannot hang the open
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    handle = os.fdopen(fd, "rb")
    try:
        source = _checked(handle, name, max_bytes, held_whole_bytes)
    except BaseException:
        handle.close()
        raise
    with handle:  # what the caller raises is the caller's, not a read error
        yield source


def _checked(handle: BinaryIO, name: str, max_bytes: int, held_whole_bytes: int) -> SourceFile:
    """The opened file as a SourceFile, checked again by its descriptor (the very file
    opened), small files read whole."""
    try:
        info = os.fstat(handle.fileno())
        _refuse_other_kinds(info)
        refuse_over_size(info.st_size, max_bytes)
        if info.st_size > held_whole_bytes:
            return SourceFile(name, info.st_size, None, handle)
        data = _read_bounded(handle, info.st_size)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    return SourceFile(name, len(data), data, handle)


def refuse_over_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        mb = -(-size // MB)
        raise ImageError(
            f"file too large: {mb} MB is over max-file-mb ({max_bytes // MB}); to accept it, "
            f"raise that setting (--max-file-mb {mb})"
        )


def _refuse_unless_regular(path: str) -> None:
    """Refuse a FIFO, device or socket (or a link to one) before it is opened: opening some
    devices has effects of its own, and reading a FIFO or /dev/zero never ends."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    _refuse_other_kinds(info)


def _refuse_other_kinds(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ImageError(f"not a regular file ({kind}): skipped without reading it")


def _read_bounded(stream: BinaryIO, size: int) -> bytes:
    """The whole stream, which holds `size` bytes: a file that grew since is not read on."""
    data = stream.read(size + 1)
    if len(data) > size:
        raise ImageError("the file grew while it was read; it is read again next run")
    return data
