"""The moving parts of an index run: the work items, one file made ready for the model (by
Pillow, in threads), a batch of JPEGs made ready on a GPU (nvJPEG, tensor_images.py) with the
CPU decoding the rest beside it, batches prepared ahead in order, and a writer thread behind a
bounded queue. The executors put them together (executor_local.py in process, cluster.py on
Ray; executor.py holds the batch step both run)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from .config import Settings
from .errors import ImageError
from .images import (
    PreparedImage,
    ResizeSpec,
    content_hash_of,
    file_capture_time,
    prepare_bytes,
    processed_path_for,
    read_file,
    save_jpeg,
    write_atomically,
)
from .scan import ScannedFile, is_raw_name
from .store import NewRow, StoredFile
from .tensor_images import (
    JpegHeader,
    decode_jpegs,
    encode_jpegs,
    resized,
    tensor_header,
    upright,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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


def prepare_item(
    settings: Settings, spec: ResizeSpec, item: WorkItem
) -> Prepared | Unchanged | Failure:
    """One file made ready for the model (any thread or process may run it): read, hash,
    decode, resize, write the processed JPEG. Unreadable files are a Failure, not an error."""
    read = read_changed(item)
    if isinstance(read, Unchanged | Failure):
        return read
    return prepare_with_pillow(settings, spec, item, *read)


def read_changed(item: WorkItem) -> tuple[bytes, str] | Unchanged | Failure:
    """A file's bytes and content hash; Unchanged when the content is the one stored."""
    try:
        data = read_file(item.file.path)
    except ImageError as exc:
        return Failure(item.file.path, str(exc))
    digest = content_hash_of(data)
    if item.stored is not None and digest == item.stored.content_hash:
        return Unchanged(item)
    return data, digest


def prepare_with_pillow(
    settings: Settings, spec: ResizeSpec, item: WorkItem, data: bytes, digest: str
) -> Prepared | Failure:
    """A file's bytes decoded, resized and written as the processed JPEG by Pillow."""
    path = item.file.path
    try:
        image = prepare_bytes(data, spec, raw=is_raw_name(path))
        destination = processed_path_for(settings, path)
        save_jpeg(image, destination)
    except ImageError as exc:
        return Failure(path, str(exc))
    except OSError as exc:  # e.g. the data directory became unwritable
        return Failure(path, f"cannot write processed JPEG: {exc}", of_file=False)
    taken_at = file_capture_time(path, item.file.mtime_ns, data, item.local_mtime)
    return Prepared(item, PreparedImage(image, digest), str(destination), taken_at)


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
class _Read:
    """A file read and hashed, its content not yet decoded."""

    item: WorkItem
    data: bytes
    digest: str
    header: JpegHeader | None  # None: not for the tensor decoder


class DevicePreparer:
    """Prepares a batch with two decoders busy at once: nvJPEG on the GPU for the JPEGs it
    takes, Pillow in the CPU threads for everything else and for a share of the JPEGs that
    follows which of the two finished its last batch first."""

    def __init__(self, settings: Settings, spec: ResizeSpec, device: str, pool: Executor) -> None:
        self.settings = settings
        self.spec = spec
        self.device = device
        self.pool = pool
        self.cpu_share = 0.25  # of the JPEGs; adjusted after each batch

    def prepare(self, items: Sequence[WorkItem]) -> list[Prepared | Unchanged | Failure]:
        reads = list(self.pool.map(self._read, items))
        on_device, on_cpu = self._split([r for r in reads if isinstance(r, _Read)])
        started = time.perf_counter()
        cpu_finished: list[float] = []

        def with_pillow(read: _Read) -> Prepared | Failure:
            result = self._with_pillow(read)
            cpu_finished.append(time.perf_counter())
            return result

        pillow = {id(r): self.pool.submit(with_pillow, r) for r in on_cpu}
        results: dict[int, Prepared | Failure] = self._with_device(on_device)
        device_seconds = time.perf_counter() - started
        results |= {key: future.result() for key, future in pillow.items()}
        cpu_seconds = max(cpu_finished, default=started) - started
        if on_cpu and on_device:
            self._balance(cpu_seconds, device_seconds)
        return [results[id(r)] if isinstance(r, _Read) else r for r in reads]

    def _read(self, item: WorkItem) -> _Read | Unchanged | Failure:
        read = read_changed(item)
        if isinstance(read, Unchanged | Failure):
            return read
        data, digest = read
        return _Read(item, data, digest, tensor_header(data, self.spec.max_pixels))

    def _split(self, reads: list[_Read]) -> tuple[list[_Read], list[_Read]]:
        """JPEGs for the device (in order), the rest and the CPU's share for Pillow."""
        jpegs = [r for r in reads if r.header is not None]
        others = [r for r in reads if r.header is None]
        to_cpu = round(len(jpegs) * self.cpu_share)
        return jpegs[to_cpu:], others + jpegs[:to_cpu]

    def _with_pillow(self, read: _Read) -> Prepared | Failure:
        return prepare_with_pillow(self.settings, self.spec, read.item, read.data, read.digest)

    def _with_device(self, reads: list[_Read]) -> dict[int, Prepared | Failure]:
        """Decode, turn upright and resize on the device; encode the processed JPEGs there
        and write them from the CPU threads. A file the decoder refuses goes to Pillow."""
        decoded = decode_jpegs([r.data for r in reads], self.device)
        results: dict[int, Prepared | Failure] = {}
        done: list[tuple[_Read, Any]] = []
        for read, pixels in zip(reads, decoded, strict=True):
            if pixels is None:
                results[id(read)] = self._with_pillow(read)
            else:
                assert read.header is not None
                done.append((read, resized(upright(pixels, read.header.orientation), self.spec)))
        encoded = encode_jpegs([pixels for _, pixels in done])
        writes = [
            self.pool.submit(self._write, read, pixels, data)
            for (read, pixels), data in zip(done, encoded, strict=True)
        ]
        for (read, _), write in zip(done, writes, strict=True):
            results[id(read)] = write.result()
        return results

    def _write(self, read: _Read, pixels: Any, data: bytes) -> Prepared | Failure:
        destination = processed_path_for(self.settings, read.item.file.path)
        try:
            write_atomically(destination, lambda out: out.write(data))
        except OSError as exc:
            error = f"cannot write processed JPEG: {exc}"
            return Failure(read.item.file.path, error, of_file=False)
        return Prepared(
            read.item, PreparedImage(pixels, read.digest), str(destination), self._taken_at(read)
        )

    @staticmethod
    def _taken_at(read: _Read) -> datetime | None:
        file = read.item.file
        return file_capture_time(file.path, file.mtime_ns, read.data, read.item.local_mtime)

    def _balance(self, cpu_seconds: float, device_seconds: float) -> None:
        """Give the CPU more JPEGs when it waited for the GPU, fewer when the GPU waited."""
        step = 1.1 if cpu_seconds < device_seconds else 1 / 1.1
        self.cpu_share = min(0.9, max(0.02, self.cpu_share * step))


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
