"""The index run spread over a Ray cluster (the `ray-address` key).

The driver scans and plans exactly as the in-process run does; Ray Data does the work:
reading and preprocessing as CPU tasks (`pipeline.prepare_item`), embedding on actors that
hold the model, and each batch written to PostgreSQL by the actor that embedded it, in one
transaction, idempotently: the actors run the in-process run's batch step
(`executor.BatchStep`). A batch retried after a killed worker is written again over itself,
so the run still ends with one row per image. The run only sees what each batch told its
`Recorder` (never images or vectors), replayed into the run's bars and report.

Ray's driver runs in a child process of the run's own (`DriverProcess`), so that what Ray does
to a process stays there: its output on the standard streams (its C++ core's log lines, the
raylet messages it relays, whatever `log_to_driver` says), its SIGTERM handler, its threads.
The run hands the child its job on stdin and reads each batch's Recorder back from a pipe of
their own; what the child prints goes to the run's debug log (`--debug` shows it). Closing the
child's stdin asks it to stop: the run does it when it ends, however it ends, and the pipe
closes by itself when the run's process dies."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np

from .batch_sizes import CPU_BATCH_SIZE
from .config import LOCAL_RAY, Settings, worker_environment
from .errors import ConfigError, ImageSearchError, one_line
from .executor import BatchStep, Job, Recorder, RunTally
from .images import ResizeSpec
from .models import Embedder
from .pipeline import WorkItem, prepare_item
from .store import Database, Store
from .words_index import photo_words

log = logging.getLogger(__name__)

EXTRA_HINT = (
    "configuration key 'ray-address' needs Ray: install the extra image-search[cluster] "
    "(uv sync --extra cluster, or pip install 'image-search[cluster]')"
)
# Ray's own settings for the driver's process, unless the user set them: no usage statistics
# sent home; repeated worker lines folded (they reach only the debug log); and workers that
# run the nodes' own Python however the run was started (under `uv run`, Ray would upload the
# working folder to the cluster and start every worker through uv).
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
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
# How often a run waiting for the driver's next word checks whether it was asked to stop.
STOP_POLL_S = 0.2
# How long a driver asked to stop has to leave Ray (a private instance: to stop it) before it
# is killed, and with it what it started. Within the page's wait for a Rescan (web.py).
DRIVER_STOP_S = 3.0
# How long a driver that has told its last batch has to leave Ray before it is killed.
DRIVER_END_S = 30.0
# The driver's last lines of output, kept to say why it ended without a word.
KEPT_LINES = 5
# The child's program: the driver's side of DriverProcess, told its pipe's descriptor.
DRIVER_PROGRAM = "import sys; from image_search.cluster import drive; sys.exit(drive(sys.argv[1]))"


def require_ray() -> None:
    """One line naming the extra (exit 2) where Ray is not installed: checked here, before
    anything is drawn or opened, without importing it (the driver's process does)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(EXTRA_HINT)


def debugging() -> bool:
    return logging.getLogger("image_search").isEnabledFor(logging.DEBUG)


# ------------------------------------------------------------------ the run's side


@dataclasses.dataclass(frozen=True)
class DriverJob:
    """What the driver's process is handed on its stdin (pickled, never on its command line).
    The settings' secrets pickle without their values (config.Secret): the database password
    reaches the driver, and through it a local instance's workers, in its environment."""

    settings: Settings
    table: str
    work: list[WorkItem]
    debug: bool


class RayExecutor:
    """The work of an index run (executor.Executor) done by Ray: preparing in CPU tasks,
    embedding and writing in actors, driven from a child process (see the module's
    docstring)."""

    def __init__(self) -> None:
        require_ray()

    def execute(self, job: Job, work: list[WorkItem], tally: RunTally) -> None:
        # The driver never loads the model: the actors do. job.embedder stays unloaded.
        order = DriverJob(worker_settings(job.settings), job.store.table, work, debugging())
        with DriverProcess(order) as driver:
            driver.wait_until_connected(tally.check_stop)
            with tally.counting():
                for recorder in driver.recorders(tally.check_stop):
                    recorder.replay(tally)
                    tally.check_stop()  # as in process: after each batch told


class DriverProcess:
    """The Ray driver in a child process, seen from the run: its messages, its output (to
    the debug log) and its end. Leaving the `with` block stops it, whatever ended the run;
    a stop request (`check_stop` raising) is heeded while the run waits for the driver."""

    def __init__(self, order: DriverJob) -> None:
        reader, writer = os.pipe()
        environment = {**RAY_ENVIRONMENT, **os.environ, **worker_environment(order.settings)}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DRIVER_PROGRAM, str(writer)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(writer,),
                env=environment,
                start_new_session=True,  # a terminal's Ctrl-C is the run's to pass on
            )
        finally:
            os.close(writer)
        self.finished = False
        self._messages: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._said: deque[str] = deque(maxlen=KEPT_LINES)
        self._output = threading.Thread(target=self._read_output, daemon=True)
        self._output.start()
        threading.Thread(target=self._read_messages, args=(reader,), daemon=True).start()
        assert self.process.stdin is not None
        try:
            pickle.dump(order, self.process.stdin)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # a driver that died at once: it says why when its first word is awaited
        except BaseException:  # Ctrl-C while a large job is written, say
            self.stop(DRIVER_STOP_S)
            raise

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(self, *raised: object) -> None:  # whatever ended the run
        self.stop(DRIVER_END_S if self.finished else DRIVER_STOP_S)

    def wait_until_connected(self, check_stop: Callable[[], None]) -> None:
        self._receive("connected", check_stop)

    def recorders(self, check_stop: Callable[[], None]) -> Iterator[Recorder]:
        """Each batch's Recorder, as the cluster finishes it, until the last."""
        while (recorder := self._receive("told", check_stop)) is not None:
            yield recorder
        self.finished = True

    def stop(self, wait: float) -> None:
        """The driver gone, with what it started: asked (its stdin closed), then, after
        `wait` seconds, killed with its process group."""
        assert self.process.stdin is not None
        with suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            log.debug("the Ray driver did not stop within %g s: killing it", wait)
            # Its process group: a private instance's processes too (not yet reaped, the
            # group's number is still the driver's).
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _receive(self, expected: str, check_stop: Callable[[], None]) -> Any:
        """The payload of the driver's next message (`expected`, or "done": None), checking
        for a stop request while it is awaited. The driver's error is raised here."""
        while True:
            check_stop()
            try:
                message = self._messages.get(timeout=STOP_POLL_S)
                break
            except queue.Empty:
                continue
        if message is None:
            raise self._ended_without_a_word()
        kind, payload = message
        if kind == "failed":
            raise payload
        if kind == "done" and expected == "told":
            return None
        if kind != expected:
            raise ImageSearchError(f"the Ray driver said {kind!r} where {expected!r} was due")
        return payload

    def _ended_without_a_word(self) -> ImageSearchError:
        code = self.process.wait()
        self._output.join(timeout=DRIVER_STOP_S)  # its last lines, read to their end
        last = self._said[-1] if self._said else "no output"
        return ImageSearchError(
            f"the Ray driver ended unexpectedly (exit code {code}): {last} "
            "(run with --debug for its output)"
        )

    def _read_messages(self, reader: int) -> None:
        with os.fdopen(reader, "rb") as pipe:
            while True:
                try:
                    self._messages.put(pickle.load(pipe))
                except EOFError:
                    break
                except Exception as exc:  # noqa: BLE001 - a message that cannot be read
                    self._messages.put(("failed", ImageSearchError(one_line(exc))))
                    break
        self._messages.put(None)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "backslashreplace").rstrip()
            if line:
                self._said.append(line)
                log.debug("ray: %s", line)


# ------------------------------------------------------------------ the driver's side


class DriverStopped(BaseException):
    """The run asked the driver to stop (or ended): the driver leaves Ray and exits."""


def drive(channel: str) -> int:
    """The driver process's program: read the job from stdin, run it on Ray, and tell each
    batch's Recorder (then "done", or "failed" with the error) through the pipe `channel`
    (a descriptor). Its stdin's end, from the run, stops it."""
    with os.fdopen(int(channel), "wb") as pipe:

        def tell(kind: str, payload: Any = None) -> None:
            pickle.dump((kind, payload), pipe)
            pipe.flush()

        order: DriverJob = pickle.load(sys.stdin.buffer)
        logging.basicConfig(
            level=logging.DEBUG if order.debug else logging.WARNING,
            format="%(name)s: %(levelname)s: %(message)s",
        )
        finished = threading.Event()
        signal.signal(signal.SIGTERM, _stopped)
        threading.Thread(target=_stop_at_end_of_input, args=(finished,), daemon=True).start()
        try:
            with connected(order.settings, order.debug) as ray:
                tell("connected")
                for recorder in _recorders(ray, order):
                    tell("told", recorder)
                finished.set()
                tell("done")
        except DriverStopped:
            return 0
        except ImageSearchError as exc:
            tell("failed", exc)
        except Exception as exc:  # noqa: BLE001 - Ray's, told as the in-process run says it
            tell("failed", worker_error(exc))
    return 0


def _stopped(signum: int, frame: object) -> None:
    raise DriverStopped()


def _stop_at_end_of_input(finished: threading.Event) -> None:
    """The run closed the driver's stdin (or died): stop, unless the job is done."""
    sys.stdin.buffer.read()
    if not finished.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def import_ray() -> Any:
    """Ray, or one line naming the extra that brings it (exit 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return ray


@contextmanager
def connected(settings: Settings, debug: bool) -> Iterator[Any]:
    """Ray, connected to `ray-address` for the run (`local`: a private instance started
    and stopped here). Worker output reaches this process only with --debug."""
    ray = import_ray()
    options: dict[str, Any] = {
        "log_to_driver": debug,
        "logging_level": logging.INFO if debug else logging.ERROR,
    }
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
    signal.signal(signal.SIGTERM, _stopped)  # ray.init puts its own in place
    try:
        _quiet_data_context(ray, debug)
        yield ray
    finally:
        ray.shutdown()


def _quiet_data_context(ray: Any, debug: bool) -> None:
    """Ray Data's own bars and stage logs only with --debug (ours are drawn by the run). A
    worker's error reaches the driver as itself, the cause of Ray's RayTaskError, not
    wrapped in Ray Data's UserCodeException."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = debug
    context.print_on_execution_start = debug
    context.enable_auto_log_stats = debug
    context.raise_original_map_exception = True


def _recorders(ray: Any, order: DriverJob) -> Iterator[Recorder]:
    """The job as a Ray Data pipeline (prepare tasks, then the actors' batch step): each
    batch's Recorder as the cluster finishes it."""
    settings, work = order.settings, order.work
    per_actor, actors = embedding_actors(ray)
    batch_size = settings.batch_size or (
        GPU_BATCH_SIZE if "num_gpus" in per_actor else CPU_BATCH_SIZE
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
        fn_constructor_kwargs={"settings": settings, "table": order.table},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        **per_actor,
    )
    for batch in told.iter_batches(batch_size=None, batch_format="numpy"):
        for blob in batch["told"]:
            yield pickle.loads(blob)


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
        words = photo_words(settings, store, threads=CPU_ACTOR_THREADS)
        self.step = BatchStep(store, embedder, settings.model_name, words)

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


def worker_settings(settings: Settings) -> Settings:
    """The settings the workers get. They would resolve relative folders against their own
    working directories (on a real cluster, each its own): these name absolute ones."""
    return dataclasses.replace(
        settings,
        source_directory=settings.source_directory.absolute(),
        output_directory=settings.output_directory.absolute(),
        data_directory=settings.data_directory.absolute(),
        ocr_recogniser=settings.ocr_recogniser.absolute() if settings.ocr_recogniser else None,
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


def embedding_actors(ray: Any) -> tuple[dict[str, int], int]:
    """What each embedding actor holds, and how many there are: one per GPU where the
    cluster has GPUs; else CPU actors on half the cores, the other half preparing images
    for them."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # Ray Data restarts a killed actor and retries its batches (max_restarts and
    # max_task_retries default to -1 for its actors); upserts make a retried batch harmless.
    if gpus:
        return {"num_gpus": 1}, gpus
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"num_cpus": 1}, max(1, cpus // 2)
