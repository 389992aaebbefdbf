"""What an index run hands its work to: an *executor*, with one small interface (`Executor`)
and two implementations, in process (executor_local.py) and on a Ray cluster (cluster.py).

Also the one batch step both executors run (`BatchStep`): copies and moves reuse stored
vectors, the model embeds the rest, the rows are upserted in one transaction, and the files
are counted as added or updated. An executor tells the run how its work goes through a
`Tally`; a Ray actor, which cannot reach the run, tells a `Recorder` that the run replays."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Settings
from .errors import ImageSearchError
from .models import Embedder
from .pipeline import Failure, Prepared, Unchanged, WorkItem, row_for
from .store import Store
from .words_index import PhotoWords

Result = Prepared | Unchanged | Failure
Write = Callable[[Callable[[], object]], None]


@dataclass(frozen=True)
class Job:
    """What a run gives its executor besides the work: the settings, the store of the table
    being filled, and the model (loaded only by an executor that embeds in this process)."""

    settings: Settings
    store: Store
    embedder: Embedder


@dataclass(frozen=True)
class Stored:
    """A batch's rows written: files new to the table, and files stored before."""

    added: int
    updated: int


class Tally(Protocol):
    """What the work tells the run as it goes, from one thread at a time."""

    def passed(self, result: Unchanged | Failure) -> None:
        """A file prepared that needs neither the model nor a new row."""

    def prepared(self, count: int) -> None:
        """Files prepared for the model."""

    def embedded(self, files: int, images: int, seconds: float) -> None:
        """A batch of `files` through the model: `images` of them embedded in `seconds`, the
        rest reusing stored vectors."""

    def stored(self, counts: Stored) -> None:
        """A batch's rows written."""


class RunTally(Tally, Protocol):
    def counting(self) -> AbstractContextManager[object]:
        """The bars, drawn while inside. An executor enters it once it is ready (the model
        loaded, the cluster connected), so that an error before is one line, not one
        between bars."""

    def check_stop(self) -> None:
        """Between batches: raise ingest.RunStopped when the run was asked to stop (a
        server shutting down), so that every batch is stored whole or not at all."""


class Executor(Protocol):
    def execute(self, job: Job, work: list[WorkItem], tally: RunTally) -> None:
        """Prepare, embed and store every item of `work` (never empty) with `BatchStep`,
        telling `tally`; return when every row is written."""


class BatchStep:
    """The batch step of both executors: a prepared batch embedded and written."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        model_name: str,
        words: PhotoWords | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.model_name = model_name
        self.words = words  # reads the words in new contents (the ocr key), if set

    def run(self, results: Sequence[Result], tally: Tally, write: Write | None = None) -> None:
        """One prepared batch: files that need no model are passed on, the others embedded
        here and written by `write` (a writer thread, say; by default at once)."""
        batch: list[Prepared] = []
        for result in results:
            if isinstance(result, Prepared):
                batch.append(result)
            else:
                tally.passed(result)
        tally.prepared(len(batch))
        if not batch:
            return
        vectors = self.embed(batch, tally)
        (write or _at_once)(functools.partial(self.write, batch, vectors, tally))

    def embed(self, batch: list[Prepared], tally: Tally) -> dict[str, Any]:
        """A vector for each content in the batch: stored ones for copies and moves, the
        model's for the rest."""
        vectors = self.store.rows.vectors_by_content(p.image.content_hash for p in batch)
        new_content: dict[str, Prepared] = {}
        for prepared in batch:
            if prepared.image.content_hash not in vectors:
                new_content.setdefault(prepared.image.content_hash, prepared)
        started = time.perf_counter()
        embedded = self.embedder.embed_images([p.image.image for p in new_content.values()])
        tally.embedded(len(batch), len(embedded), time.perf_counter() - started)
        vectors.update(zip(new_content, embedded, strict=True))
        return vectors

    def write(self, batch: list[Prepared], vectors: dict[str, Any], tally: Tally) -> None:
        """The batch's rows in one transaction, idempotently: a batch written twice (a
        retried Ray task) leaves one row per file. Then the words in them are read and
        stored (on a GPU in the writer's thread, while the next batch is embedded; a run
        stopped between the two reads them at its next start)."""
        rows = [row_for(p, vectors[p.image.content_hash]) for p in batch]
        self.store.rows.upsert(rows, self.model_name)
        if self.words:
            self.words.write(self.words.read(batch))
        added = sum(1 for prepared in batch if prepared.item.stored is None)
        tally.stored(Stored(added, len(batch) - added))


def _at_once(write: Callable[[], object]) -> None:
    write()


class Recorder:
    """A Tally for a process that cannot reach the run (a Ray actor): it keeps what it is
    told, small and picklable, and the error that ended its batch, for `replay` in the run's
    process."""

    def __init__(self) -> None:
        self.told: list[tuple[str, tuple[Any, ...]]] = []
        self.error: ImageSearchError | None = None

    def passed(self, result: Unchanged | Failure) -> None:
        self.told.append(("passed", (result,)))

    def prepared(self, count: int) -> None:
        self.told.append(("prepared", (count,)))

    def embedded(self, files: int, images: int, seconds: float) -> None:
        self.told.append(("embedded", (files, images, seconds)))

    def stored(self, counts: Stored) -> None:
        self.told.append(("stored", (counts,)))

    def replay(self, tally: Tally) -> None:
        """Tell `tally` what this batch told, then raise its error, if any."""
        for name, arguments in self.told:
            getattr(tally, name)(*arguments)
        if self.error is not None:
            raise self.error
