"""The index run on Ray (the ray-address key): a private instance (`local`) and a two-node
cluster on this machine, against the password-protected server; the rows, vectors and
processed JPEGs must be those of an in-process run, even when a worker is killed."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import (
    assert_one_row_per_file,
    many_photos,
    row_count,
    run_cli,
    run_cli_process,
    start_index,
    stored_rows,
    wait_for_rows,
    write_config,
)

from image_search.config import Settings, load_settings
from image_search.errors import ConfigError
from image_search.executors import executor_for
from image_search.ingest import IndexReport, Progress, run_index
from image_search.models import Embedder

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.cluster


def folder_of_photos(settings: Settings, count: int) -> list[Path]:
    """`count` photos, one byte-identical copy, and one file that is not an image."""
    folder = settings.source_directory
    photos = many_photos(folder, count)
    copy = folder / "sub" / "copy.jpg"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photos[0], copy)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    return [*photos, copy]


def index(settings: Settings, progress: Progress | None = None) -> IndexReport:
    embedder = Embedder.from_settings(settings)
    return run_index(settings, embedder, progress=progress, executor=executor_for(settings))


def processed_digests(rows: list[dict]) -> dict[str, str]:
    return {
        row["file_path"]: hashlib.sha256(Path(row["processed_path"]).read_bytes()).hexdigest()
        for row in rows
    }


def assert_same_as_in_process(settings: Settings, ray_address: str) -> None:
    """The folder indexed in process, then on Ray into another table: same everything."""
    files = folder_of_photos(settings, 10)
    expected_report = index(settings)
    expected = stored_rows(settings)
    expected_jpegs = processed_digests(expected)
    on_ray = dataclasses.replace(
        settings, table_name=f"{settings.table_name}_ray", ray_address=ray_address
    )
    seen: list[tuple[int, int]] = []
    report = index(on_ray, Progress(callback=lambda done, total: seen.append((done, total))))
    assert report.to_json() == expected_report.to_json()
    work = len(files) + 1
    assert seen[0] == (0, work) and seen[-1] == (work, work)  # the page's bar, as in process
    assert report.added == len(files) and len(report.failed) == 1
    rows = stored_rows(on_ray)
    assert_one_row_per_file(on_ray, files)
    assert [r["file_path"] for r in rows] == [r["file_path"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        for column in ("file_name", "path_hash", "content_hash", "processed_path"):
            assert got[column] == want[column]
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5)
    assert processed_digests(rows) == expected_jpegs  # the JPEGs rewritten, byte for byte


# ---------------------------------------------------------------- local: a private instance


def test_local_gives_the_rows_of_an_in_process_run(
    make_server_settings: Callable[..., Settings], password_server: dict
) -> None:
    assert not ray.is_initialized()
    settings = make_server_settings(postgres_password=password_server["password"])
    settings.source_directory.mkdir(parents=True)
    assert_same_as_in_process(settings, "local")
    assert not ray.is_initialized()  # the private instance was stopped with the run


def test_ray_address_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")

    def load(**values: str) -> Settings:
        return load_settings(config, flags=values, environ={})

    assert load().ray_address is None
    assert load(**{"ray-address": "local"}).ray_address == "local"
    server = {"postgres-host": "db.example.org", "ray-address": "ray://head:10001"}
    assert load(**server).ray_address == "ray://head:10001"
    with pytest.raises(ConfigError, match="postgres-host"):
        load(**{"ray-address": "auto"})
    with pytest.raises(ConfigError, match="ray-address"):
        load(**{"ray-address": " "})


def test_embedded_database_needs_postgres_host_except_local(make_settings, tmp_path) -> None:
    settings = make_settings()
    config = write_config(tmp_path / "config.json", settings)
    result = run_cli("index", "--env", str(config), "--ray-address", "auto")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "postgres-host" in result.stderr


def test_without_ray_one_line_names_the_extra(make_settings, tmp_path) -> None:
    settings = make_settings()
    settings.source_directory.mkdir(parents=True)
    many_photos(settings.source_directory, 1)
    config = write_config(tmp_path / "config.json", settings)
    hide_ray = tmp_path / "no_ray"
    (hide_ray / "ray").mkdir(parents=True)
    (hide_ray / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    result = run_cli_process(
        "index", "--env", str(config), "--ray-address", "local", env={"PYTHONPATH": str(hide_ray)}
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "image-search[cluster]" in result.stderr


# ---------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """Two Ray nodes on this machine, one CPU each; this process stays connected to them
    for the module (runs reuse the connection: one Ray start for all these tests)."""
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_give_the_rows_of_an_in_process_run(
    two_nodes: str, make_server_settings: Callable[..., Settings], password_server: dict
) -> None:
    settings = make_server_settings(postgres_password=password_server["password"])
    settings.source_directory.mkdir(parents=True)
    assert_same_as_in_process(settings, two_nodes)


def ray_worker_processes(title: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::") and title in cmdline:
            found.append(process)
    return found


def index_killing_one(settings: Settings, files: list[Path], title: str) -> None:
    """Index `files` on Ray, killing the first worker process whose title holds `title`
    as soon as one runs; the run must still store each file exactly once."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = index(settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    victims = ray_worker_processes(title)
    while not victims and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
        victims = ray_worker_processes(title)
    assert victims, f"no Ray worker running {title} was seen"
    victims[0].kill()
    runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert isinstance(report, IndexReport)
    assert report.added == len(files) and not report.failed
    assert_one_row_per_file(settings, files)
    assert row_count(settings) == len(files)


@pytest.mark.parametrize(
    "title", ["EmbedAndStore", "prepare_batch"], ids=["embedding-actor", "prepare-task"]
)
def test_a_killed_worker_still_ends_with_one_row_per_image(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    title: str,
) -> None:
    settings = make_server_settings(
        postgres_password=password_server["password"], ray_address=two_nodes, batch_size=2
    )
    settings.source_directory.mkdir(parents=True)
    index_killing_one(settings, many_photos(settings.source_directory, 40), title)


def test_a_killed_driver_is_finished_by_the_next_run(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    tmp_path: Path,
) -> None:
    """The driver killed mid-run (its Ray job dies with it); the re-run on the same cluster
    finishes the job, without duplicates."""
    settings = make_server_settings(ray_address=two_nodes, batch_size=2)
    settings.source_directory.mkdir(parents=True)
    files = many_photos(settings.source_directory, 120)
    config = write_config(tmp_path / "config.json", settings)
    env = {"IMAGE_SEARCH_POSTGRES_PASSWORD": password_server["password"]}
    with_password = dataclasses.replace(settings, postgres_password=password_server["password"])

    driver = start_index(config, env=env)
    wait_for_rows(with_password, driver, timeout=180)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert row_count(with_password) < len(files), "the run finished before it could be killed"

    done = run_cli_process("index", "--env", str(config), "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_one_row_per_file(with_password, files)


def test_gpu_clusters_get_one_embedding_actor_per_gpu() -> None:
    from image_search.cluster import embedding_resources

    class Resources:
        def __init__(self, **resources: float) -> None:
            self.resources = resources

        def cluster_resources(self) -> dict[str, float]:
            return self.resources

    assert embedding_resources(Resources(CPU=32, GPU=4)) == {"num_gpus": 1, "concurrency": 4}
    assert embedding_resources(Resources(CPU=8)) == {"num_cpus": 1, "concurrency": 4}
    assert embedding_resources(Resources(CPU=1)) == {"num_cpus": 1, "concurrency": 1}


def test_a_model_the_workers_cannot_load_is_one_line(make_settings, tmp_path) -> None:
    """`local` with the embedded database; the workers' error, as the in-process run says it,
    and nothing of Ray's in the terminal."""
    settings = make_settings(model_name=str(tmp_path / "no-such-model"))
    settings.source_directory.mkdir(parents=True)
    many_photos(settings.source_directory, 2)
    config = write_config(tmp_path / "config.json", settings)
    result = run_cli_process("index", "--env", str(config), "--ray-address", "local", "--json")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no-such-model" in result.stderr
    assert "(raylet)" not in result.stderr and "Traceback" not in result.stderr

