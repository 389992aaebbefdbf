"""The index run spread over a Ray cluster (the `ray-address` key).

The driver scans and plans exactly as the in-process run does; Ray Data does the work:
reading and preprocessing as CPU tasks (`pipeline.prepare_item`), embedding on actors that
hold the model, and each batch written to PostgreSQL by the actor that embedded it, in one
transaction, idempotently: the actors run the in-process run's batch step
(`executor.BatchStep`). A batch retried after a killed worker is written again over itself,
so the run still ends with one row per image. The driver only sees what each batch told its
`Recorder` (never images or vectors), replayed into the run's bars and report."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO

import numpy as np

from .batch_sizes import CPU_BATCH_SIZE
from .config import LOCAL_RAY, Settings
from .errors import ConfigError, ImageSearchError, one_line
from .executor import BatchStep, Job, Recorder, RunTally
from .images import ResizeSpec
from .models import Embedder
from .pipeline import WorkItem, prepare_item
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
                # "local" as the address: a new instance even where `ray start` runs one.
                ray.init(address="local", include_dashboard=False, **options)
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
    """What Ray prints past its own settings. `log_to_driver`, `logging_level`, the levels
    of Ray's loggers and Ray Data's context keep worker output and Ray's Python logs out of
    the terminal; two channels are left that no setting of Ray 2.60 closes quietly. The
    driver's C++ core writes log lines straight to file descriptor 2 (an error line at each
    run, as Ray Data creates its actors: "constructor arguments in the object store";
    RAY_BACKEND_LOG_LEVEL hides it but prints a line of its own), and the driver's error
    listener prints raylet messages ("(raylet) A worker died ...") to sys.stdout whatever
    log_to_driver says. Meanwhile descriptor 2 is a pipe whose reader passes on every
    other line, and Python's own stderr writes to the terminal directly (the bars need no
    line ends)."""
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
    """Ray Data's own bars and stage logs are not for photo folders (ours are drawn). A
    worker's error reaches the driver as itself, the cause of Ray's RayTaskError, not
    wrapped in Ray Data's UserCodeException."""
    context = ray.data.DataContext.get_current()
    debug = debugging()
    context.enable_progress_bars = debug
    context.print_on_execution_start = debug
    context.enable_auto_log_stats = debug
    context.raise_original_map_exception = True


# ------------------------------------------------------------------ the workers


def prepare_batch(
    batch: dict[str, np.ndarray], settings: Settings, spec: ResizeSpec
) -> dict[str, np.ndarray]:
    """A CPU task: each work item read, hashed, decoded, resized, its JPEG written. Items
    travel pickled: paths may hold bytes that Arrow strings cannot."""
    results = [prepare_item(settings, spec, pickle.loads(blob)) for blob in batch["item"]]
    return {"result": _objects(pickle.dumps(result) for result in results)}


class EmbedAndStore:
    """An actor holding the model and a database connection: runs the batch step on each
    batch of prepared images and returns what the batch told its Recorder. Our errors (a
    model that cannot be loaded, a database that cannot be reached) travel in the Recorder,
    as they are: raised from a constructor they reach the driver only as text, after Ray
    restarted the actor over and over, and raised from a task with Ray Data's retry advice
    appended to their message."""

    def __init__(self, settings: Settings, table: str) -> None:
        self.failed: ImageSearchError | None = None
        try:
            embedder = _loaded(settings)
            store = self._store(settings, table)
        except ImageSearchError as exc:  # told with the first batch
            self.failed = exc
            return
        self.step = BatchStep(store, embedder, settings.model_name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        recorder = Recorder()
        try:
            if self.failed is not None:
                raise self.failed
            self.step.run([pickle.loads(blob) for blob in batch["result"]], recorder)
        except ImageSearchError as exc:
            recorder.error = exc
        return {"told": _objects([pickle.dumps(recorder)])}

    @staticmethod
    def _store(settings: Settings, table: str) -> Store:
        database = Database(settings)
        database.open()
        return Store(database, table)


def _loaded(settings: Settings) -> Embedder:
    """The model, loaded; on the CPU with the threads this actor owns."""
    embedder = Embedder.from_settings(settings)
    if embedder.resolved_device == "cpu":
        embedder.threads = CPU_ACTOR_THREADS  # ONNX Runtime's sessions
        if embedder.backend == "torch":
            import torch

            torch.set_num_threads(CPU_ACTOR_THREADS)
    embedder.model()
    return embedder


def _objects(values: Any) -> np.ndarray:
    blobs = list(values)
    array = np.empty(len(blobs), dtype=object)
    array[:] = blobs
    return array


# ------------------------------------------------------------------ the driver


class RayExecutor:
    """The work of an index run (executor.Executor) done by Ray: preparing in CPU tasks,
    embedding and writing in actors (see the module's docstring)."""

    def __init__(self) -> None:
        import_ray()  # a missing extra is one line before anything is drawn

    def execute(self, job: Job, work: list[WorkItem], tally: RunTally) -> None:
        # The driver never loads the model: the actors do. job.embedder stays unloaded.
        settings = worker_settings(job.settings)
        with connected(settings) as ray:
            quiet_data_context(ray)
            with tally.counting():
                for recorder in self._recorders(ray, settings, job.store.table, work):
                    recorder.replay(tally)

    @staticmethod
    def _recorders(
        ray: Any, settings: Settings, table: str, work: list[WorkItem]
    ) -> Iterator[Recorder]:
        resources = embedding_resources(ray)
        batch_size = settings.batch_size or (
            GPU_BATCH_SIZE if "num_gpus" in resources else CPU_BATCH_SIZE
        )
        blocks = max(1, min(math.ceil(len(work) / batch_size), 64))
        items = ray.data.from_items(
            [{"item": pickle.dumps(item)} for item in work], override_num_blocks=blocks
        )
        prepared = items.map_batches(
            prepare_batch,
            fn_kwargs={"settings": settings, "spec": ResizeSpec.of(settings)},
            batch_size=batch_size,
            num_cpus=1,
            memory=PREPARE_MEMORY,
        )
        told = prepared.map_batches(
            EmbedAndStore,
            fn_constructor_kwargs={"settings": settings, "table": table},
            batch_size=batch_size,
            **resources,
        )
        try:
            for batch in told.iter_batches(batch_size=None, batch_format="numpy"):
                for blob in batch["told"]:
                    yield pickle.loads(blob)
        except Exception as exc:  # Ray wraps a worker's error in its own
            raise worker_error(exc) from exc


def worker_settings(settings: Settings) -> Settings:
    """The settings the workers get. They would resolve relative folders against their own
    working directories (on a real cluster, each its own): these name absolute ones."""
    return dataclasses.replace(
        settings,
        source_directory=settings.source_directory.absolute(),
        output_directory=settings.output_directory.absolute(),
        data_directory=settings.data_directory.absolute(),
    )


def worker_error(error: BaseException) -> ImageSearchError:
    """What failed on a worker, as the in-process run would say it (a model that cannot be
    loaded, a database that cannot be reached): the first of our errors among the causes
    Ray wrapped (RayTaskError.cause carries the worker's exception), else Ray's own, on one
    line."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "cause", None)  # Ray's wrapper, an instance of its cause too
        if isinstance(inner, BaseException):
            cause = inner
        elif isinstance(cause, ImageSearchError):
            return cause
        else:
            cause = cause.__cause__
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
