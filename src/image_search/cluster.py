"""The index run spread over a Ray cluster (the `ray-address` key).

The driver scans and plans exactly as the in-process run does; Ray Data does the work:
reading and preprocessing as CPU tasks (`ingest.prepare_item`), embedding on actors that hold
the model, and each batch written to PostgreSQL by the actor that embedded it, in one
transaction, idempotently (`Rows.upsert`). A batch retried after a killed worker is written
again over itself, so the run still ends with one row per image. The driver only sees small
outcomes (never images or vectors) and drives the same bars and report."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from . import errors
from .config import LOCAL_RAY, Settings
from .errors import ConfigError, ImageSearchError, one_line
from .images import ResizeSpec
from .ingest import CPU_BATCH_SIZE, Indexer, Progress
from .models import Embedder
from .pipeline import Failure, Prepared, Unchanged, WorkItem, prepare_item, row_for
from .scan import display_path
from .store import Database, Store

log = logging.getLogger(__name__)

EXTRA_HINT = (
    "configuration key 'ray-address' needs Ray: install the extra image-search[cluster] "
    "(uv sync --extra cluster, or pip install 'image-search[cluster]')"
)
# Ray's own settings for a run started from here: no usage statistics sent home, and its
# logs in its session folder, not in the user's terminal (unless --debug).
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1"}
# A line of Ray's C++ core log ("[2026-01-01 10:00:00,000 E 123 123] core_worker.cc:1: ...").
NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] \S+:\d+: ")
# Our error as the last line of a worker's traceback that Ray passes on as text.
OUR_ERROR_LINE = re.compile(r"^image_search\.errors\.(\w+Error): (.+)$", re.MULTILINE)
# A line Ray's driver relays from a worker or raylet: "(raylet) ...", "(pid=12) ...",
# "(MapWorker pid=12) ...", maybe coloured.
RELAYED_LINE = re.compile(r"^\s*(\x1b\[[\d;]*m)?\((raylet|pid=\d+|[\w.()-]+ pid=\d+)")
# What a prepare task may hold: a batch's decoded images and their JPEGs. (Asked for
# explicitly, it also keeps Ray Data from fusing these tasks into the model's actors, whose
# CPUs would then decode instead of embedding.)
PREPARE_MEMORY = 512 * 2**20
# Threads (torch's or ONNX Runtime's) of an actor on the CPU: it holds one CPU of Ray's and
# shares a second with the prepare tasks, which leave it idle while it waits for their batches.
CPU_ACTOR_THREADS = 2
# Images per batch when batch-size is unset and the actors have GPUs (the driver cannot see
# their memory, as the in-process run does; 64 fits ViT-L/14-class models on 16 GB).
GPU_BATCH_SIZE = 64
# Loggers of Ray and Ray Data that otherwise print to the terminal at INFO.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def import_ray() -> Any:
    """Ray, or one line naming the extra that brings it (exit 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return ray


def debugging() -> bool:
    return logging.getLogger("image_search").isEnabledFor(logging.DEBUG)


@contextmanager
def connected(settings: Settings) -> Iterator[Any]:
    """Ray, connected to `ray-address` for the run (`local`: a private instance started
    and stopped here). A process already connected to Ray (a script, a test) keeps its
    connection, and it stays open after the run."""
    debug = debugging()
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    ray = import_ray()
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {
        "log_to_driver": debug,
        "logging_level": logging.INFO if debug else logging.ERROR,
    }
    with ExitStack() as stack:
        if not debug:
            stack.enter_context(native_logs_dropped())
        try:
            if settings.ray_address == LOCAL_RAY:
                ray.init(include_dashboard=False, **options)
            else:
                ray.init(address=settings.ray_address, **options)
        except Exception as exc:
            raise ImageSearchError(
                f"cannot connect to the Ray cluster at {settings.ray_address}: {one_line(exc)}. "
                "Check the ray-address key and that the cluster is running (ray status)"
            ) from exc
        stack.callback(ray.shutdown)
        yield ray


@contextmanager
def native_logs_dropped() -> Iterator[None]:
    """Ray's C++ core writes its log lines (a recovered actor, say) straight to file
    descriptor 2, past Python's logging and any log level. Meanwhile descriptor 2 is a pipe
    whose reader passes on every other line, and Python's own stderr writes to the terminal
    directly (the bars need no line ends)."""
    sys.stderr.flush()
    terminal = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)
    python_stderr = sys.stderr
    terminal_text = open(  # noqa: SIM115 - closed in the finally below
        os.dup(terminal), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
    )
    sys.stderr = WithoutRayLines(terminal_text)
    python_stdout = sys.stdout
    sys.stdout = WithoutRayLines(python_stdout)  # type: ignore[assignment]
    relay = threading.Thread(target=_pass_on, args=(reader, terminal), daemon=True)
    relay.start()
    try:
        yield
    finally:
        terminal_text.close()
        sys.stderr = python_stderr
        sys.stdout = python_stdout
        os.dup2(terminal, 2)  # the pipe's last writer closes: the relay reads its end
        relay.join(timeout=5)
        os.close(terminal)


class WithoutRayLines:
    """Python's stdout and stderr during a run: everything but the lines Ray's driver relays
    from its workers and raylets ("(raylet) Task ... will be retried"), which ignore
    log_to_driver."""

    def __init__(self, terminal: TextIO) -> None:
        self._terminal = terminal
        self._dropped = False

    def write(self, text: str) -> int:
        # print() writes a line's end on its own, after the line.
        dropped = bool(RELAYED_LINE.match(text)) or (self._dropped and text == "\n")
        self._dropped = dropped and text != "\n"
        return len(text) if dropped else self._terminal.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self._terminal, name)


def _pass_on(reader: int, terminal: int) -> None:
    pending = b""
    with os.fdopen(reader, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(terminal, line + b"\n")
    if pending and not NATIVE_LOG_LINE.match(pending):
        os.write(terminal, pending)


def quiet_data_context(ray: Any) -> None:
    """Ray Data's own bars and stage logs are not for photo folders (ours are drawn)."""
    context = ray.data.DataContext.get_current()
    debug = debugging()
    context.enable_progress_bars = debug
    context.print_on_execution_start = debug
    context.enable_auto_log_stats = debug


# ------------------------------------------------------------------ the workers


def prepare_batch(
    batch: dict[str, np.ndarray], settings: Settings, spec: ResizeSpec
) -> dict[str, np.ndarray]:
    """A CPU task: each work item read, hashed, decoded, resized, its JPEG written. Items
    travel pickled: paths may hold bytes that Arrow strings cannot."""
    results = [prepare_item(settings, spec, pickle.loads(blob)) for blob in batch["item"]]
    return {"result": _objects(pickle.dumps(result) for result in results)}


class EmbedAndStore:
    """An actor holding the model and a database connection: embeds a batch of prepared
    images (copies and moves reuse stored vectors) and writes its rows in one transaction."""

    def __init__(self, settings: Settings, table: str) -> None:
        self.settings = settings
        self.embedder = Embedder.from_settings(settings)
        if self.embedder.resolved_device == "cpu":  # the threads this actor owns
            self.embedder.threads = CPU_ACTOR_THREADS  # ONNX Runtime's sessions
            if self.embedder.backend == "torch":
                import torch

                torch.set_num_threads(CPU_ACTOR_THREADS)
        self.embedder.model()
        self.database = Database(settings)
        self.database.open()
        self.store = Store(self.database, table)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.loads(blob) for blob in batch["result"]]
        prepared = [result for result in results if isinstance(result, Prepared)]
        started = time.perf_counter()
        embedded = self._store(prepared)
        seconds = time.perf_counter() - started
        outcomes = [Outcome.of(result) for result in results]
        if outcomes:  # the batch's model time rides on its first outcome
            outcomes[0].images, outcomes[0].seconds = embedded, seconds
        return {"outcome": _objects(pickle.dumps(outcome) for outcome in outcomes)}

    def _store(self, batch: list[Prepared]) -> int:
        """As `Indexer._store_batch`; the number of images that went through the model."""
        if not batch:
            return 0
        rows = self.store.rows
        vectors = rows.vectors_by_content(p.image.content_hash for p in batch)
        new_content: dict[str, Prepared] = {}
        for prepared in batch:
            if prepared.image.content_hash not in vectors:
                new_content.setdefault(prepared.image.content_hash, prepared)
        embedded = self.embedder.embed_images([p.image.image for p in new_content.values()])
        vectors.update(zip(new_content, embedded, strict=True))
        rows.upsert(
            [row_for(p, vectors[p.image.content_hash]) for p in batch], self.settings.model_name
        )
        return len(new_content)


@dataclass
class Outcome:
    """What the driver needs of one file's result: what happened, never the image."""

    kind: str  # "stored", "unchanged" or "failed"
    path: str
    item: WorkItem | None = None  # None for a failure
    error: str = ""
    of_file: bool = True  # see Failure
    images: int = 0  # model time of the whole batch, on its first outcome
    seconds: float = 0.0

    @classmethod
    def of(cls, result: Prepared | Unchanged | Failure) -> Outcome:
        if isinstance(result, Failure):
            return cls("failed", result.path, error=result.error, of_file=result.of_file)
        kind = "stored" if isinstance(result, Prepared) else "unchanged"
        return cls(kind, result.item.file.path, result.item)


def _objects(values: Any) -> np.ndarray:
    blobs = list(values)
    array = np.empty(len(blobs), dtype=object)
    array[:] = blobs
    return array


# ------------------------------------------------------------------ the driver


class ClusterIndexer(Indexer):
    """The index run of `Indexer` (the same scan, plan, removals and report), with the
    preparing, embedding and writing done by Ray."""

    def __init__(self, settings: Settings, store: Store, progress: Progress) -> None:
        import_ray()  # a missing extra is one line before anything is drawn
        # Workers would resolve relative folders against their own working directories (on
        # a real cluster, each its own): the settings they get name absolute ones.
        settings = dataclasses.replace(
            settings,
            source_directory=settings.source_directory.absolute(),
            output_directory=settings.output_directory.absolute(),
            data_directory=settings.data_directory.absolute(),
        )
        # The driver never loads the model: the actors do. The Embedder stays unloaded.
        super().__init__(settings, store, Embedder.from_settings(settings), progress)

    def _process(self, work: list[WorkItem]) -> None:
        if not work:
            return
        with connected(self.settings) as ray:
            self._process_on(ray, work)

    def _process_on(self, ray: Any, work: list[WorkItem]) -> None:
        quiet_data_context(ray)
        touched: list[Unchanged] = []
        with self.progress.stages(len(work)) as progress:
            for outcome in self._outcomes(ray, work):
                progress.prepared()
                if outcome.kind == "stored":
                    assert outcome.item is not None
                    self._count_stored(outcome.item)
                    progress.embedded(1, outcome.images, outcome.seconds)
                    progress.stored(1)
                    continue
                if outcome.kind == "failed":
                    log.warning("skipped %s: %s", display_path(outcome.path), outcome.error)
                    self.report.failed.append(
                        Failure(outcome.path, outcome.error, outcome.of_file)
                    )
                elif outcome.item is not None:
                    touched.append(Unchanged(outcome.item))
                progress.passed()
        order = {item.file.path: position for position, item in enumerate(work)}
        self.report.failed.sort(key=lambda failure: order.get(failure.path, 0))  # scan order
        self._store_touched(touched)

    def _outcomes(self, ray: Any, work: list[WorkItem]) -> Iterator[Outcome]:
        resources = embedding_resources(ray)
        batch_size = self.settings.batch_size or (
            GPU_BATCH_SIZE if "num_gpus" in resources else CPU_BATCH_SIZE
        )
        blocks = max(1, min(math.ceil(len(work) / batch_size), 64))
        items = ray.data.from_items(
            [{"item": pickle.dumps(item)} for item in work], override_num_blocks=blocks
        )
        prepared = items.map_batches(
            prepare_batch,
            fn_kwargs={"settings": self.settings, "spec": ResizeSpec.of(self.settings)},
            batch_size=batch_size,
            num_cpus=1,
            memory=PREPARE_MEMORY,
        )
        outcomes = prepared.map_batches(
            EmbedAndStore,
            fn_constructor_kwargs={"settings": self.settings, "table": self.store.table},
            batch_size=batch_size,
            **resources,
        )
        try:
            for batch in outcomes.iter_batches(batch_size=None, batch_format="numpy"):
                for blob in batch["outcome"]:
                    yield pickle.loads(blob)
        except ImageSearchError:
            raise
        except Exception as exc:  # Ray wraps a worker's error (with its traceback) in its own
            raise worker_error(exc) from exc

    def _count_stored(self, item: WorkItem) -> None:
        if item.stored is None:
            self.report.added += 1
        else:
            self.report.updated += 1


def worker_error(error: BaseException) -> ImageSearchError:
    """What failed on a worker, as the in-process run would say it (a model that cannot be
    loaded, a database that cannot be reached): the first of our errors among the causes
    Ray wrapped, else Ray's own, on one line."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ImageSearchError):
            return cause
        seen.add(id(cause))
        inner = getattr(cause, "cause", None)
        cause = inner if isinstance(inner, BaseException) else cause.__cause__
    ours = OUR_ERROR_LINE.findall(str(error))  # an error raised in an actor's constructor
    if ours:
        kind, message = ours[-1]
        return getattr(errors, kind, ImageSearchError)(message.strip())
    first = one_line(error).split(". ")[0]
    return ImageSearchError(f"the Ray cluster failed: {first} (run with --debug for details)")


def embedding_resources(ray: Any) -> dict[str, Any]:
    """One actor per GPU where the cluster has GPUs; else CPU actors on half the cores,
    the other half preparing images for them."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # Ray Data restarts a killed actor and retries its batches (max_restarts and
    # max_task_retries default to -1 for its actors); upserts make a retried batch harmless.
    if gpus:
        return {"num_gpus": 1, "concurrency": gpus}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"num_cpus": 1, "concurrency": max(1, cpus // 2)}
