"""The index run, written once: scan the folder, diff it with the table (plan), hand the work
to an executor (in process or on Ray: executor.py), fill capture dates, mark the rows of files
gone missing and purge them after their grace period, remember files that failed (and why),
draw the bars and report. The executor is the caller's choice (executor_choice.executor_for);
this module never imports the Ray one. How missing files are reported is in missing.py, what
made a file fail in failure_cause.py."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import RESERVED_TABLE_PREFIX, Settings
from .errors import ConfigError
from .executor import Executor, Job, Stored
from .executor_local import LocalExecutor
from .failure_cause import UNREADABLE, failure_cause
from .images import file_capture_time
from .missing import MissingFolder, how_long_kept, missing_folders, missing_folders_note
from .models import Embedder
from .models.precision import planned_spec
from .pipeline import Failure, Unchanged, WorkItem
from .scan import (
    IMAGE_EXTENSIONS,
    Exclusions,
    LeftOut,
    ScannedFile,
    can_open,
    display_path,
    folder_prefix,
    scan_images,
    stat_file,
)
from .source_files import MB
from .store import Database, FailedFile, Store, StoredFile
from .words_index import fill_words, prepare_words_table

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# A first load at least this large builds the HNSW index after the rows are in.
BULK_LOAD_ROWS = 1000
# Runs expected to embed for longer than this say so once, with the measured rate.
ANNOUNCE_AFTER_S = 60.0
# Capture dates filled for rows stored before schema 3 are written this many at a time.
DATES_PER_WRITE = 1000
# A run's summary, as str.format templates: these, in English, for the command line; the
# page passes its reader's language (web_text.summary_words). `kept_*` say until when the
# rows of missing files are kept (missing.how_long_kept picks one).
SUMMARY_WORDS: dict[str, str] = {
    "counts": "{scanned} scanned, {added} added, {updated} updated, {unchanged} unchanged, "
    "{removed} removed, {skipped} skipped",
    "remembered": " ({count} unchanged since they failed before: not read again)",
    "restored": "; {count} missing files back",
    "missing": "; {count} missing, left out of searches ({kept})",
    "kept_by_flag": "kept: --keep-missing",
    "kept_until_prune": "kept until index --prune: no image was found at all",
    "kept_for_days": "removed after {days} days missing; index --prune removes them now",
    "missing_folders": "; missing folders: {folders}",
    "more_folders": " and {count} more",
    "excluded": "; left out {folders} folders and {files} images "
    "(exclude, exclude-system-folders)",
    "dated": "; capture dates filled for {count} stored images",
    "words_read": "; words read in {count} stored images",
}


@dataclass
class IndexReport:
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0  # rows deleted: purged after their grace period, pruned, left out
    failed: list[Failure] = field(default_factory=list)
    dated: int = 0  # stored rows that gained a capture date from their file's header
    words_read: int = 0  # stored photos whose words were read from their processed JPEGs
    missing: int = 0  # rows of files not found, kept but left out of searches
    restored: int = 0  # rows of missing files found again (embedded again only if changed)
    missing_folders: list[MissingFolder] = field(default_factory=list)
    missing_kept: str = "kept_for_days"  # until when the missing rows are kept: a kept_* word
    grace_days: int = 0  # missing-grace-days, for kept_for_days
    excluded_folders: int = 0  # left out by exclude and exclude-system-folders
    excluded_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [{"path": display_path(f.path), "error": f.error} for f in self.failed],
            "missing": self.missing,
            "restored": self.restored,
            "missing_folders": [folder.to_json() for folder in self.missing_folders],
            "excluded_folders": self.excluded_folders,
            "excluded_files": self.excluded_files,
        }

    def summary(self, words: Mapping[str, str] = SUMMARY_WORDS) -> str:
        """One line. Files that cannot be indexed are `skipped`: not failures of the run."""
        text = words["counts"].format(
            scanned=self.scanned,
            added=self.added,
            updated=self.updated,
            unchanged=self.unchanged,
            removed=self.removed,
            skipped=len(self.failed),
        )
        if remembered := sum(1 for failure in self.failed if failure.remembered):
            text += words["remembered"].format(count=remembered)
        if self.restored:
            text += words["restored"].format(count=self.restored)
        if self.missing:
            kept = words[self.missing_kept].format(days=self.grace_days)
            text += words["missing"].format(count=self.missing, kept=kept)
            text += missing_folders_note(self.missing_folders, words)
        if self.excluded_folders or self.excluded_files:
            excluded = {"folders": self.excluded_folders, "files": self.excluded_files}
            text += words["excluded"].format(**excluded)
        if self.dated:
            text += words["dated"].format(count=self.dated)
        if self.words_read:
            text += words["words_read"].format(count=self.words_read)
        return text


class RunStopped(Exception):
    """The run was asked to stop (the page's server is shutting down) and ended between two
    batches: every batch it stored is whole, and the next run does the rest."""


class Progress:
    """How an index run tells where it is: three bars in a terminal (or none), a callback
    `(done, total)` for the page (done: files finished, stored or passed over), and one line
    with the time left for long runs. One object serves one run. Once `stop` is set, the run
    ends at its next batch boundary with RunStopped; `report` then holds what it stored (as
    it does when Ctrl-C or SIGTERM ended it)."""

    STAGES = ("Converting + resizing", "Embedding", "Registering")

    def __init__(
        self,
        show_bars: bool = False,
        callback: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        # Bars redraw with \r and escape codes: only for a terminal, never into a log file.
        self.show_bars = show_bars and sys.stderr.isatty()
        self.callback = callback
        self.stop = stop
        self.report: IndexReport | None = None  # the run's, from its start
        self._bars: list[tqdm] = []
        self._total = 0
        self._finished = 0
        self._announced = False

    def scanning(self, files: Iterable[ScannedFile]) -> Iterable[ScannedFile]:
        return tqdm(files, desc="Scanning", unit="file") if self.show_bars else files

    @contextmanager
    def stages(self, total: int) -> Iterator[Progress]:
        self._total = total
        if self.callback:
            self.callback(0, total)
        self._bars = [
            tqdm(
                total=total,
                desc=stage,
                unit="img",
                position=position,
                leave=True,
                disable=not self.show_bars,
                dynamic_ncols=True,
            )
            for position, stage in enumerate(self.STAGES)
        ]
        try:
            yield self
        except BaseException:
            for bar in self._bars:  # an error is the last thing on the screen, not the bars
                bar.leave = False
            raise
        finally:
            for bar in self._bars:
                bar.close()

    def prepared(self, count: int = 1) -> None:
        self._bars[0].update(count)

    def passed(self, count: int = 1) -> None:
        """Files that need neither the model nor a new row (failed, or unchanged content)."""
        self._bars[1].update(count)
        self._bars[2].update(count)
        self._finish(count)

    def embedded(self, count: int, images: int, seconds: float) -> None:
        self._bars[1].update(count)
        self._announce_eta(images, seconds)

    def stored(self, count: int) -> None:
        self._bars[2].update(count)
        self._finish(count)

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise RunStopped()

    def _finish(self, count: int) -> None:
        self._finished += count
        if self.callback:
            self.callback(self._finished, self._total)

    def _announce_eta(self, images: int, seconds: float) -> None:
        """After the first batch through the model, say how long a long run will take."""
        if self._announced or not images:
            return
        self._announced = True
        rate = images / max(seconds, 1e-9)
        left = self._total - self._finished - images  # failed and unchanged files are done
        if left / rate > ANNOUNCE_AFTER_S:
            log.info(
                "embedding %d images at %.1f images/s: about %d minutes left",
                left,
                rate,
                round(left / rate / 60) or 1,
            )


class ReportTally:
    """The run's tally (executor.RunTally): counts into the report, moves the bars, and
    keeps the unchanged files for one write at the end."""

    def __init__(self, report: IndexReport, progress: Progress, total: int) -> None:
        self.report = report
        self.progress = progress
        self.total = total
        self.touched: list[Unchanged] = []

    def counting(self) -> AbstractContextManager[object]:
        return self.progress.stages(self.total)

    def check_stop(self) -> None:
        self.progress.check_stop()

    def passed(self, result: Unchanged | Failure) -> None:
        self.progress.prepared()
        if isinstance(result, Failure):
            log.warning("skipped %s: %s", display_path(result.path), result.error)
            self.report.failed.append(result)
        else:
            self.touched.append(result)
        self.progress.passed()

    def prepared(self, count: int) -> None:
        self.progress.prepared(count)

    def embedded(self, files: int, images: int, seconds: float) -> None:
        self.progress.embedded(files, images, seconds)

    def stored(self, counts: Stored) -> None:
        self.report.added += counts.added
        self.report.updated += counts.updated
        self.progress.stored(counts.added + counts.updated)


def plan(
    scanned: list[ScannedFile], stored: dict[str, StoredFile]
) -> tuple[list[WorkItem], int, list[StoredFile]]:
    """Split the folder into work to do, files unchanged by size+mtime, and the rows of files
    not found."""
    work: list[WorkItem] = []
    unchanged = 0
    for file in scanned:
        row = stored.get(file.path)
        if row is not None and row.size == file.size and row.mtime_ns == file.mtime_ns:
            unchanged += 1
        else:
            work.append(WorkItem(file, row, datetime.fromtimestamp(file.mtime_ns / 1e9)))
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
        progress: Progress,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.progress = progress
        self.executor = executor
        self.report = IndexReport()
        progress.report = self.report

    def run(
        self,
        root: str,
        keep_missing: bool,
        also: Sequence[str] = (),
        prune: bool = False,
        retry_failed: bool = False,
    ) -> IndexReport:
        """Make the table match the folder `root`, plus the files `also` (outside it). Rows
        of files not found are kept but left out of searches, and purged once missing for
        missing-grace-days (never with `keep_missing`; at once with `prune`)."""
        rows = self.store.rows
        stored = rows.stored_files(root)
        if also:
            stored.update(rows.stored_files_at(also))
        scanned, left_out = self._scan(root, also)
        work, self.report.unchanged, unscanned = plan(scanned, stored)
        self.report.restored = rows.restore(
            [row.id for f in scanned if (row := stored.get(f.path)) is not None and row.missing]
        )
        failed_before = rows.failed_files(root)
        if not retry_failed:
            work = self._pass_over_failed(work, failed_before)
        warn_clamped_dates(work)
        info = self.store.info()
        if len(work) >= BULK_LOAD_ROWS and info is not None and info.stored == 0:
            self.store.schema.drop_vector_index()  # rebuilt once below, not row by row
        self._fill_dates(scanned, stored)
        prepare_words_table(self.settings, self.store)
        self._process(work)
        self._settle_failures(work, failed_before)
        self._sweep(root, scanned, unscanned, left_out, keep_missing=keep_missing, prune=prune)
        self._fill_words()
        self.store.schema.ensure_vector_index()
        self.store.schema.mark_indexed()
        return self.report

    def _scan(self, root: str, also: Sequence[str]) -> tuple[list[ScannedFile], LeftOut]:
        """The image files of `root` (and `also`), and what the scan left out."""
        own_folders = (self.settings.output_directory, self.settings.data_directory)
        left_out = LeftOut()
        found = scan_images(
            Path(root),
            exclude=own_folders,
            raw_with_jpeg=self.settings.raw_with_jpeg,
            exclusions=Exclusions.of(self.settings),
            left_out=left_out,
        )
        scanned = list(self.progress.scanning(found))
        scanned += [f for f in map(stat_file, also) if f is not None]
        self.report.scanned = len(scanned)
        self.report.excluded_folders, self.report.excluded_files = left_out.folders, left_out.files
        for folder in left_out.unlisted:
            log.warning("cannot list %s: its stored images are kept", display_path(folder))
        return scanned, left_out

    def _pass_over_failed(
        self, work: list[WorkItem], failed_before: dict[str, FailedFile]
    ) -> list[WorkItem]:
        """The work less new files that failed before with this same size and mtime, for the
        same cause: they are reported again, not read again (nor the model loaded for them).
        A file that could not be opened is tried again once it can be."""
        if not failed_before:
            return work
        cause = failure_cause(self.settings)
        todo, retried = [], 0
        for item in work:
            file, known = item.file, failed_before.get(item.file.path)
            if known and item.stored is None and known.stat == (file.size, file.mtime_ns):
                if still_failing(known, cause):
                    log.warning(
                        "skipped %s (unchanged since it failed before): %s",
                        display_path(file.path),
                        known.error,
                    )
                    self.report.failed.append(Failure(file.path, known.error, remembered=True))
                    continue
                retried += 1
            todo.append(item)
        if retried:
            log.info(
                "trying again %d files that failed before with other settings, decoders or "
                "permissions",
                retried,
            )
        return todo

    def _settle_failures(self, work: list[WorkItem], failed_before: dict[str, FailedFile]) -> None:
        """Remember the files that failed in this run, with what made them fail; forget those
        that no longer fail (or are gone); drop the stored rows of changed files that now
        fail, like missing ones: a search must not return a picture the file no longer holds."""
        items = {item.file.path: item for item in work}
        new = [f for f in self.report.failed if f.of_file and not f.remembered]
        rows = self.store.rows
        if new:
            cause = failure_cause(self.settings)
            rows.remember_failures(
                [
                    FailedFile(
                        f.path,
                        items[f.path].file.size,
                        items[f.path].file.mtime_ns,
                        f.error,
                        cause if can_open(f.path) else UNREADABLE,
                    )
                    for f in new
                ]
            )
        failing = {f.path for f in self.report.failed if f.of_file}
        rows.forget_failures(set(failed_before) - failing)
        self._delete([stored for f in new if (stored := items[f.path].stored) is not None])

    def _sweep(
        self,
        root: str,
        scanned: list[ScannedFile],
        unscanned: list[StoredFile],
        left_out: LeftOut,
        keep_missing: bool,
        prune: bool,
    ) -> None:
        """The rows of files the scan did not find. Those not missing go now (see
        _drop_not_missing); the others are kept, out of searches, until their file is back or
        the grace period ends (never with `keep_missing`); `prune` purges them now. A scan
        that found nothing at all (an unmounted drive looks so) purges nothing but by
        `prune`."""
        missing = self._drop_not_missing(unscanned, left_out)
        self.store.rows.mark_missing([row.id for row in missing if not row.missing])
        grace = self.settings.missing_grace_days
        if prune:
            self._delete(missing)
            missing = []
        elif not keep_missing and scanned:
            purged = set(self._delete(missing, missing_for_days=grace))
            missing = [row for row in missing if row.id not in purged]
        self.report.missing = len(missing)
        self.report.missing_folders = missing_folders(root, missing, scanned)
        self.report.missing_kept = how_long_kept(keep_missing, found_any=bool(scanned))
        self.report.grace_days = grace
        if not scanned:
            self._warn_no_images(root, kept=len(missing))

    def _drop_not_missing(
        self, unscanned: list[StoredFile], left_out: LeftOut
    ) -> list[StoredFile]:
        """Delete the rows of files that are not missing though the scan did not find them:
        a file still there was left out on purpose (exclude, raw-with-jpeg), and one whose
        content another row holds was moved or was a copy. The rest: files gone from view,
        or in a folder the scan could not list."""
        unlisted = tuple(folder_prefix(folder) for folder in left_out.unlisted)

        def still_there(row: StoredFile) -> bool:
            path = row.file_path
            return not path.startswith(unlisted) and os.path.exists(path)

        elsewhere = self.store.rows.contents_held_elsewhere(unscanned)
        redundant = [
            row
            for row in unscanned
            if row.content_hash in elsewhere or (not row.missing and still_there(row))
        ]
        taken = set(self._delete(redundant))
        return [row for row in unscanned if row.id not in taken]

    # -- the work, done by the executor --------------------------------------

    def _fill_dates(self, scanned: list[ScannedFile], stored: dict[str, StoredFile]) -> None:
        """Capture dates for rows stored before there was a column for them, from the
        files' headers: no decode, no model."""
        if not any(row.undated for row in stored.values()):
            return  # one quick pass: only tables from before schema 3 have undated rows
        undated = [
            (row.id, file)
            for file in scanned
            if (row := stored.get(file.path)) is not None and row.undated
        ]
        if not undated:
            return
        files = [file for _, file in undated]
        workers = max(1, os.cpu_count() or 1)
        max_bytes = self.settings.max_file_mb * MB

        def date_of(file: ScannedFile) -> datetime:
            return file_capture_time(file.path, file.mtime_ns, max_bytes=max_bytes)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dates") as pool:
            dates = list(pool.map(date_of, files))
        changes = [(row_id, taken) for (row_id, _), taken in zip(undated, dates, strict=True)]
        for start in range(0, len(changes), DATES_PER_WRITE):
            self.store.rows.set_taken_at(changes[start : start + DATES_PER_WRITE])
        self.report.dated = len(changes)

    def _fill_words(self) -> None:
        """Words for stored photos that have none (indexed before the ocr key was on): read
        from their processed JPEGs, no model. Words no photo holds any more are dropped."""
        progress = self.progress
        self.report.words_read = fill_words(
            self.settings,
            self.store,
            progress.show_bars,
            progress.callback,
            progress.check_stop,
            rows_dropped=bool(self.report.removed or self.report.updated),
        )

    def _process(self, work: list[WorkItem]) -> None:
        """Prepare, embed and store `work` by the executor, which tells the tally."""
        if not work:
            return
        tally = ReportTally(self.report, self.progress, len(work))
        self.executor.execute(Job(self.settings, self.store, self.embedder), work, tally)
        order = {item.file.path: position for position, item in enumerate(work)}
        self.report.failed.sort(key=lambda failure: order.get(failure.path, 0))  # scan order
        self._store_touched(tally.touched)

    def _store_touched(self, touched: list[Unchanged]) -> None:
        changes = []
        for entry in touched:
            assert entry.item.stored is not None
            changes.append((entry.item.stored.id, entry.item.file.size, entry.item.file.mtime_ns))
        self.store.rows.update_stat(changes)
        self.report.unchanged += len(touched)

    @staticmethod
    def _warn_no_images(root: str, kept: int) -> None:
        """An empty folder, one of other files, or an unmounted drive (which looks empty:
        never wipe an index for that)."""
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        keeping = f"; keeping its {kept} stored images (is the drive mounted?)" if kept else ""
        log.warning(
            "no images found in %s (looked for %s)%s", display_path(root), extensions, keeping
        )

    def _delete(self, rows: list[StoredFile], missing_for_days: int | None = None) -> list[int]:
        """Remove these rows (with `missing_for_days`, those missing that long) and the
        processed JPEGs no row of any table points at any more; the ids removed."""
        if not rows:
            return []
        removed = self.store.rows.delete([row.id for row in rows], missing_for_days)
        for path in removed.unused_processed:
            Path(path).unlink(missing_ok=True)
        self.report.removed += len(removed.ids)
        return removed.ids


def still_failing(known: FailedFile, cause: str) -> bool:
    """Whether a file that failed before, unchanged since, would fail the same way now: the
    same settings and decoders, or still no permission to open it."""
    if known.cause == UNREADABLE:
        return not can_open(known.file_path)
    return known.cause == cause


def warn_clamped_dates(work: list[WorkItem]) -> None:
    """Files dated where the table cannot follow (see scan.MTIME_NS_RANGE) are still indexed."""
    for item in work:
        if item.file.mtime_clamped:
            log.warning(
                "%s: its modification time is out of range; stored as %s",
                display_path(item.file.path),
                datetime.fromtimestamp(item.file.mtime_ns / 1e9).date(),
            )


def run_index(
    settings: Settings,
    embedder: Embedder,
    database: Database | None = None,
    source: Path | None = None,
    keep_missing: bool = False,
    reindex: bool = False,
    progress: Progress | None = None,
    executor: Executor | None = None,
    prune: bool = False,
    retry_failed: bool = False,
) -> IndexReport:
    """Index `source` (default: the source-directory key) into the configured table, the
    work done by `executor`: the caller's choice for the `ray-address` key
    (executor_choice.executor_for), by default this process. Rows of missing files are kept
    for missing-grace-days (for good with `keep_missing`), or purged now with `prune`; files
    that failed before are passed over while their cause is the same, or all tried again
    with `retry_failed`.

    With `reindex`, every image is embedded again with the configured model into a shadow
    table that replaces the old one in one transaction at the end: the old vectors stay
    searchable until then, and a killed re-index resumes where it stopped.
    """
    root = source_folder(settings, source)
    if executor is None:
        if settings.ray_address:  # a caller that forgot the key: never quietly in process
            raise ValueError("ray-address is set: pass executor=executor_for(settings)")
        executor = LocalExecutor()
    with ExitStack() as stack:
        if database is None:  # a script or a test: open one for this run
            database = stack.enter_context(Database(settings))
        live = Store(database, settings.table_name)
        store = Store(database, shadow_table_name(settings.table_name)) if reindex else live
        wanted = planned_spec(settings, embedder.decision)
        settings = embedder.decision.applied_to(settings)  # what a Ray worker decides from
        # A re-index re-embeds every stored image, those indexed from other folders too.
        others = live.rows.file_paths_outside(root) if reindex and live.info() else []
        if reindex:
            store.schema.drop_if_other_vectors(wanted)
        store.schema.ensure(wanted)
        indexer = Indexer(settings, store, embedder, progress or Progress(), executor)
        report = indexer.run(
            root,
            keep_missing=keep_missing and not reindex,
            also=others,
            prune=prune,
            retry_failed=retry_failed,
        )
        if reindex:
            store.schema.take_over(settings.table_name)
        return report


def source_folder(settings: Settings, source: Path | None = None) -> str:
    """The absolute folder to index, checked before anything is drawn or opened; the error
    names what the user gave (the --source flag or the source-directory key)."""
    folder = source if source is not None else settings.source_directory
    if not os.path.isdir(folder):
        given = f"--source {folder}" if source is not None else (
            f"configuration key 'source-directory' ({folder})"
        )
        problem = "does not exist" if not os.path.exists(folder) else "is not a folder"
        raise ConfigError(f"{given}: {os.path.abspath(folder)} {problem}")
    return os.path.abspath(folder)


def shadow_table_name(table: str) -> str:
    """The table a re-index of `table` fills: named by a hash of the whole name under the
    prefix no table-name may take, so that it is neither a user's table nor the shadow of
    another table (cut names could collide)."""
    digest = hashlib.sha256(table.encode()).hexdigest()[:16]
    return f"{RESERVED_TABLE_PREFIX}reindex_{digest}"
