"""The index run: diff the folder with the table, preprocess in threads, embed in batches,
store each batch in one transaction, remove rows of deleted files, report."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import Settings
from .errors import ImageError
from .images import (
    PreparedImage,
    ResizeSpec,
    content_hash_of,
    prepare_bytes,
    read_file,
    save_jpeg,
)
from .models import Embedder
from .scan import ScannedFile, scan_images, stat_file
from .store import NewRow, Store, StoredFile, VectorSpec, open_store

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# A first load at least this large builds the HNSW index after the rows are in.
BULK_LOAD_ROWS = 1000
# Runs expected to embed for longer than this say so once, with the measured rate.
ANNOUNCE_AFTER_S = 60.0


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass
class IndexReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[Failure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.scanned} scanned, {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed, {len(self.failed)} failed"
        )


@dataclass(frozen=True)
class WorkItem:
    """A scanned file that is new or whose size or mtime changed since it was stored."""

    file: ScannedFile
    stored: StoredFile | None


@dataclass(frozen=True)
class Prepared:
    item: WorkItem
    image: PreparedImage
    processed_path: str


@dataclass(frozen=True)
class Unchanged:
    """Touched (new mtime) but byte-identical to what is stored: no decode, no model."""

    item: WorkItem


def path_hash(file_path: str) -> str:
    """The seed's duplicate key: a hash of the file's path and name."""
    return hashlib.sha256(file_path.encode("utf-8", "surrogateescape")).hexdigest()


def processed_path_for(settings: Settings, file_path: str) -> Path:
    digest = path_hash(file_path)
    return (settings.processed_directory / digest[:2] / f"{digest}.jpg").resolve()


def resize_spec(settings: Settings) -> ResizeSpec:
    return ResizeSpec(
        width=settings.resize_width,
        height=settings.resize_height,
        mode=settings.resize_mode,
        max_pixels=settings.max_image_pixels,
    )


def plan(
    scanned: list[ScannedFile], stored: dict[str, StoredFile]
) -> tuple[list[WorkItem], int, list[StoredFile]]:
    """Split the folder into work to do, files unchanged by size+mtime, and rows to remove."""
    work: list[WorkItem] = []
    unchanged = 0
    for file in scanned:
        row = stored.get(file.path)
        if row is not None and row.size == file.size and row.mtime_ns == file.mtime_ns:
            unchanged += 1
        else:
            work.append(WorkItem(file, row))
    present = {file.path for file in scanned}
    missing = [row for path, row in stored.items() if path not in present]
    return work, unchanged, missing


class Indexer:
    """One index run over one source folder into one table."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: Embedder,
        show_progress: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.show_progress = show_progress
        self.on_progress = on_progress
        self.spec = resize_spec(settings)
        self.report = IndexReport()
        self._work_total = 0
        self._stored_so_far = 0
        self._announced = False

    def _bar(self, total: int, description: str, position: int) -> tqdm:
        return tqdm(
            total=total,
            desc=description,
            unit="img",
            position=position,
            leave=True,
            disable=not self.show_progress,
            dynamic_ncols=True,
        )

    def run(self, root: str, keep_missing: bool, also: Sequence[str] = ()) -> IndexReport:
        """Make the table match the folder `root`, plus the files `also` (outside it)."""
        stored = self.store.stored_files(root)
        if also:
            stored.update(self.store.stored_files_at(also))
        own_folders = (self.settings.output_directory, self.settings.data_directory)
        found = scan_images(Path(root), exclude=own_folders)
        if self.show_progress:
            found = tqdm(found, desc="Scanning", unit="file")
        scanned = list(found) + [f for f in map(stat_file, also) if f is not None]
        self.report.scanned = len(scanned)
        work, self.report.unchanged, missing = plan(scanned, stored)
        if len(work) >= BULK_LOAD_ROWS and self.store.count() == 0:
            self.store.drop_vector_index()  # rebuilt once below, not row by row
        self._process(work)
        if not keep_missing:
            self._remove(missing, folder_is_empty=not scanned)
        self.store.ensure_vector_index()
        self.store.mark_indexed()
        return self.report

    # -- the pipeline -------------------------------------------------------

    def _prepare(self, item: WorkItem) -> Prepared | Unchanged | Failure:
        """Runs in a worker thread: read, hash, decode, resize, write the processed JPEG."""
        path = item.file.path
        try:
            data = read_file(path)
            digest = content_hash_of(data)
            if item.stored is not None and digest == item.stored.content_hash:
                return Unchanged(item)
            prepared = PreparedImage(prepare_bytes(data, self.spec), digest)
            destination = processed_path_for(self.settings, path)
            save_jpeg(prepared.image, destination)
        except ImageError as exc:
            return Failure(path, str(exc))
        except OSError as exc:  # e.g. the data directory became unwritable
            return Failure(path, f"cannot write processed JPEG: {exc}")
        return Prepared(item, prepared, str(destination))

    def _prepared_chunks(
        self, pool: Executor, work: list[WorkItem]
    ) -> Iterator[list[Prepared | Unchanged | Failure]]:
        """Preprocess `work` a batch at a time in the thread pool.

        On a GPU the next batch is prepared while the caller embeds this one. On the CPU the
        model already keeps every core busy, and decoding beside it only slows both (its
        threads wait for each other), so the two take turns.
        """
        size = self.settings.batch_size
        chunks = [work[i : i + size] for i in range(0, len(work), size)]
        overlap = self.embedder.resolved_device != "cpu"

        def submit(chunk: list[WorkItem]) -> list[Future[Prepared | Unchanged | Failure]]:
            return [pool.submit(self._prepare, item) for item in chunk]

        pending = submit(chunks[0])
        for following in [*chunks[1:], []]:
            results = [future.result() for future in pending]
            pending = submit(following) if overlap else []
            yield results
            if not overlap:
                pending = submit(following)

    def _process(self, work: list[WorkItem]) -> None:
        if not work:
            return
        self._work_total = len(work)
        bars = [
            self._bar(len(work), "Converting + resizing", 0),
            self._bar(len(work), "Embedding", 1),
            self._bar(len(work), "Registering", 2),
        ]
        touched: list[Unchanged] = []
        done = 0
        workers = max(1, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare") as pool:
            for results in self._prepared_chunks(pool, work):
                batch: list[Prepared] = []
                for result in results:
                    done += 1
                    bars[0].update()
                    if self.on_progress:
                        self.on_progress(done, len(work))
                    if isinstance(result, Failure):
                        log.warning("skipped %s: %s", result.path, result.error)
                        self.report.failed.append(result)
                        self._advance(bars[1:], 1)
                    elif isinstance(result, Unchanged):
                        touched.append(result)
                        self._advance(bars[1:], 1)
                    else:
                        batch.append(result)
                self._store_batch(batch, bars)
        self._store_touched(touched)
        for bar in bars:
            bar.close()

    @staticmethod
    def _advance(bars: list[tqdm], n: int) -> None:
        for bar in bars:
            bar.update(n)

    def _store_batch(self, batch: list[Prepared], bars: list[tqdm]) -> None:
        """Embed what is new content (copies and moves reuse stored vectors), then store."""
        if not batch:
            return
        vectors = self.store.vectors_by_content(p.image.content_hash for p in batch)
        new_content: dict[str, Prepared] = {}
        for prepared in batch:
            if prepared.image.content_hash not in vectors:
                new_content.setdefault(prepared.image.content_hash, prepared)
        started = time.perf_counter()
        embedded = self.embedder.embed_images([p.image.image for p in new_content.values()])
        self._note_rate(len(embedded), time.perf_counter() - started, len(batch))
        vectors.update(zip(new_content, embedded, strict=True))
        bars[1].update(len(batch))
        rows = [self._row(p, vectors[p.image.content_hash]) for p in batch]
        self.store.upsert(rows, self.settings.model_name)
        bars[2].update(len(batch))
        for prepared in batch:
            if prepared.item.stored is None:
                self.report.added += 1
            else:
                self.report.updated += 1

    def _note_rate(self, embedded: int, seconds: float, batch: int) -> None:
        """After the first batch through the model, say how long a long run will take."""
        self._stored_so_far += batch
        if self._announced or not embedded:
            return
        self._announced = True
        rate = embedded / max(seconds, 1e-9)
        left = self._work_total - self._stored_so_far
        if left / rate > ANNOUNCE_AFTER_S:
            log.info(
                "embedding %d images at %.1f images/s: about %d minutes left",
                left,
                rate,
                round(left / rate / 60) or 1,
            )

    @staticmethod
    def _row(prepared: Prepared, vector: Any) -> NewRow:
        file = prepared.item.file
        return NewRow(
            file_path=file.path,
            file_name=file.name,
            path_hash=path_hash(file.path),
            content_hash=prepared.image.content_hash,
            size=file.size,
            mtime_ns=file.mtime_ns,
            processed_path=prepared.processed_path,
            embedding=vector,
        )

    def _store_touched(self, touched: list[Unchanged]) -> None:
        changes = []
        for entry in touched:
            assert entry.item.stored is not None
            changes.append((entry.item.stored.id, entry.item.file.size, entry.item.file.mtime_ns))
        self.store.update_stat(changes)
        self.report.unchanged += len(touched)

    def _remove(self, missing: list[StoredFile], folder_is_empty: bool) -> None:
        if not missing:
            return
        if folder_is_empty:
            # An unmounted drive looks like an empty folder: never wipe an index for that.
            log.warning(
                "no images found in the source folder; keeping its %d stored images "
                "(is the drive mounted?)",
                len(missing),
            )
            return
        for processed in self.store.delete([row.id for row in missing]):
            Path(processed).unlink(missing_ok=True)
        self.report.removed = len(missing)


def run_index(
    settings: Settings,
    embedder: Embedder,
    source: Path | None = None,
    keep_missing: bool = False,
    reindex: bool = False,
    show_progress: bool = True,
    on_progress: ProgressCallback | None = None,
) -> IndexReport:
    """Index `source` (default: the source-directory key) into the configured table.

    With `reindex`, every image is embedded again with the configured model into a shadow
    table that replaces the old one in one transaction at the end: the old vectors stay
    searchable until then, and a killed re-index resumes where it stopped.
    """
    root = os.path.abspath(source if source is not None else settings.source_directory)
    table = shadow_table_name(settings.table_name) if reindex else settings.table_name
    # A re-index re-embeds every stored image, those indexed from other folders too.
    others = files_indexed_outside(settings, root) if reindex else []
    with open_store(settings, table) as store:
        wanted = VectorSpec.of(settings)
        if reindex:
            store.drop_if_other_model(wanted)
        store.ensure_schema(wanted)
        indexer = Indexer(settings, store, embedder, show_progress, on_progress)
        report = indexer.run(root, keep_missing=keep_missing and not reindex, also=others)
        if reindex:
            store.take_over(settings.table_name)
        return report


def files_indexed_outside(settings: Settings, root: str) -> list[str]:
    with open_store(settings) as live:
        return live.file_paths_outside(root) if live.info() is not None else []


def shadow_table_name(table: str) -> str:
    return f"{table[:54]}_reindex"
