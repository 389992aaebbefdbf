"""The moving parts of an index run: the work items, one file made ready for the model (by
Pillow, in threads), a batch of JPEGs made ready on a GPU (nvJPEG, tensor_images.py) with the
CPU decoding the rest beside it (two_decoders.py shares the batch between them), batches
prepared ahead in order, and a writer thread behind a bounded queue. The executors put them
together (executor_local.py in process, cluster.py on Ray; executor.py holds the batch step
both run)."""

from __future__ import annotations

import errno
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .config import Settings
from .errors import ImageError, ImageSearchError
from .images import (
    PreparedImage,
    ResizeSpec,
    decode,
    header_capture_time,
    processed_path_for,
    save_jpeg,
    write_atomically,
)
from .scan import ScannedFile, display_path
from .source_files import HELD_WHOLE_BYTES, SourceFile, open_source
from .store import NewRow, StoredFile
from .tensor_images import (
    JpegHeader,
    decode_jpegs,
    encode_jpegs,
    resized,
    tensor_header,
    upright,
)
from .two_decoders import Read

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
# A processed JPEG that cannot be written for these reasons stops the run: every other file
# would fail the same way.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
JPEG_NAMES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Failure:
    path: str
    error: str
    of_file: bool = True
    """False when the file is not to blame (the processed JPEG could not be written): such
    a failure is neither remembered nor a reason to drop the file's stored row."""
    remembered: bool = False  # failed in an earlier run and unchanged since: not read again


@dataclass(frozen=True)
class WorkItem:
    """A scanned file that is new or whose size or mtime changed since it was stored."""

    file: ScannedFile
    stored: StoredFile | None
    # The mtime in the local time of the process that planned the run: a Ray worker in
    # another time zone (containers run in UTC) dates the file as an in-process run would.
    local_mtime: datetime | None = field(default=None, compare=False)

    def capture_date(self, taken: datetime | None) -> datetime:
        """The capture date: the header's, else the file's mtime (in the planner's zone)."""
        return taken or self.local_mtime or datetime.fromtimestamp(self.file.mtime_ns / 1e9)


@dataclass(frozen=True)
class Prepared:
    item: WorkItem
    image: PreparedImage
    processed_path: str
    taken_at: datetime | None = None  # the capture date: EXIF DateTimeOriginal, else mtime


@dataclass(frozen=True)
class Unchanged:
    """Touched (new mtime) but byte-identical to what is stored: no decode, no model."""

    item: WorkItem


Result = Prepared | Unchanged | Failure


def prepare_item(settings: Settings, spec: ResizeSpec, item: WorkItem) -> Result:
    """One file made ready for the model (any thread or process may run it): read, hash,
    decode, resize, write the processed JPEG. A file that cannot be read or decoded, for
    whatever reason its decoder gives, is a Failure, not an error of the run."""
    path = item.file.path
    try:
        with open_source(path, spec.max_file_bytes) as source:
            digest = source.content_hash()
            if _unchanged(item, digest):
                return Unchanged(item)
            decoded = decode(source, spec)
    except ImageError as exc:
        return Failure(path, str(exc))
    prepared = PreparedImage(decoded.image, digest)
    taken = item.capture_date(decoded.taken)
    return written(settings, item, prepared, taken, functools.partial(save_jpeg, decoded.image))


def _unchanged(item: WorkItem, digest: str) -> bool:
    return item.stored is not None and digest == item.stored.content_hash


def written(
    settings: Settings,
    item: WorkItem,
    image: PreparedImage,
    taken: datetime,
    write: Callable[[Path], object],
) -> Prepared | Failure:
    """A prepared file once `write` has written its processed JPEG. A full disk stops the
    run; another write error is this file's, and not remembered."""
    destination = processed_path_for(settings, item.file.path)
    try:
        write(destination)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            folder = display_path(str(settings.processed_directory))
            raise ImageSearchError(
                f"cannot write processed JPEGs under {folder}: {exc.strerror}; free some "
                "space there (data-directory) and run again"
            ) from exc
        return Failure(item.file.path, f"cannot write processed JPEG: {exc}", of_file=False)
    return Prepared(item, image, str(destination), taken)


def row_for(prepared: Prepared, vector: Any) -> NewRow:
    """The row of a prepared file, with its vector."""
    file = prepared.item.file
    return NewRow(
        file_path=file.path,
        content_hash=prepared.image.content_hash,
        size=file.size,
        mtime_ns=file.mtime_ns,
        processed_path=prepared.processed_path,
        embedding=vector,
        taken_at=prepared.taken_at,
    )


def prepared_batches(
    pool: Executor,
    prepare: Callable[[T], R],
    work: Sequence[T],
    batch_size: int,
    overlap: bool,
) -> Iterator[list[R]]:
    """`prepare` applied to `work` in the pool, yielded a batch at a time, in order.

    With `overlap` (a GPU) the next batch is prepared while the caller embeds this one. On
    the CPU the model already keeps every core busy, and decoding beside it only slows both
    (their threads wait for each other), so the two take turns."""
    chunks = [work[i : i + batch_size] for i in range(0, len(work), batch_size)]
    if not chunks:  # no work: no batch at all, not one empty batch
        return

    def submit(chunk: Sequence[T]) -> list[Future[R]]:
        return [pool.submit(prepare, item) for item in chunk]

    pending = submit(chunks[0])
    for following in [*chunks[1:], []]:
        results = [future.result() for future in pending]
        pending = submit(following) if overlap else []
        yield results
        if not overlap:
            pending = submit(following)




@dataclass(frozen=True)
class DeviceRead:
    """A JPEG read for the device: its item, content hash, header (None: not one the
    device decoder takes) and capture date."""

    item: WorkItem
    digest: str
    header: JpegHeader | None
    taken: datetime | None


class DevicePreparer:
    """The two decoders of a GPU run (two_decoders.BatchDecoder): nvJPEG on the device for
    the JPEGs it takes, decoded, turned upright and resized there, their processed JPEGs
    encoded there too; Pillow in the CPU threads (prepare_item) for everything else."""

    def __init__(self, settings: Settings, spec: ResizeSpec, device: str, pool: Executor) -> None:
        self.settings = settings
        self.spec = spec
        self.device = device
        self.pool = pool

    def takes(self, item: WorkItem) -> bool:
        """JPEGs by name, small enough to be held whole."""
        file = item.file
        return file.path.lower().endswith(JPEG_NAMES) and file.size <= HELD_WHOLE_BYTES

    def held_bytes(self, item: WorkItem) -> int:
        return 2 * item.file.size  # the bytes read, and their copy handed to the decoder

    def read(self, item: WorkItem) -> Read[DeviceRead] | Unchanged | Failure:
        try:
            with open_source(item.file.path, self.spec.max_file_bytes) as opened:
                data = opened.data()
        except ImageError as exc:
            return Failure(item.file.path, str(exc))
        source = SourceFile.of_bytes(data, item.file.path)
        digest = source.content_hash()
        if _unchanged(item, digest):
            return Unchanged(item)
        header = tensor_header(data, self.spec.max_pixels)
        # A file the device does not take goes to prepare_item, which reads its date itself.
        taken = header_capture_time(source) if header is not None else None
        return Read(DeviceRead(item, digest, header, taken), data)

    def decode(self, reads: list[Read[DeviceRead]]) -> list[Any | None]:
        """Decoded on the device, upright and resized; None for what it does not take."""
        ours = [read for read in reads if read.key.header is not None]
        decoded = iter(decode_jpegs([read.data for read in ours], self.device))
        made: list[Any | None] = []
        for read in reads:
            header = read.key.header
            pixels = next(decoded) if header is not None else None
            if pixels is not None:
                assert header is not None
                pixels = resized(upright(pixels, header.orientation), self.spec)
            made.append(pixels)
        return made

    def finish(self, keys: list[DeviceRead], decoded: list[Any]) -> list[Result]:
        """The processed JPEGs encoded on the device and written from the CPU threads."""
        encoded = encode_jpegs(decoded)
        writes = [
            self.pool.submit(self._written, key, pixels, data)
            for key, pixels, data in zip(keys, decoded, encoded, strict=True)
        ]
        return [write.result() for write in writes]

    def prepare(self, item: WorkItem) -> Result:
        return prepare_item(self.settings, self.spec, item)

    def _written(self, key: DeviceRead, pixels: Any, data: bytes) -> Prepared | Failure:
        def write(destination: Path) -> None:
            write_atomically(destination, lambda out: out.write(data))

        image = PreparedImage(pixels, key.digest)
        return written(self.settings, key.item, image, key.item.capture_date(key.taken), write)


class BackgroundWriter:
    """Runs writes one after another in a thread of their own, behind a queue of at most
    `depth` waiting writes (so memory stays flat); `depth` 0 runs each write at once. An error
    in a write is raised again in the caller at its next submit or at close."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth:
            self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
            self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.close(raise_error=error is None)

    def submit(self, write: Callable[[], object]) -> None:
        self._raise_error()
        if self._thread is None:
            write()
        else:
            self._queue.put(write)

    def close(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if raise_error:
            self._raise_error()

    def _run(self) -> None:
        while (write := self._queue.get()) is not None:
            if self._error is None:  # after an error the rest is skipped, not half done
                try:
                    write()
                except BaseException as exc:
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
