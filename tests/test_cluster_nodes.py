"""The index run on a two-node Ray cluster on this machine, against the password-protected
server: the rows, vectors and processed JPEGs of an in-process run, even when a worker or the
driver is killed. (test_cluster.py: a private instance.)"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import (
    assert_one_row_per_file,
    many_photos,
    row_count,
    run_cli_process,
    start_index,
    wait_for_rows,
    write_config,
)
from ray_runs import assert_same_as_in_process, index

from image_search.config import Settings, environment_with
from image_search.ingest import IndexReport

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def two_nodes(password_server: dict) -> Iterator[str]:
    """Two Ray nodes on this machine, one CPU each; this process stays connected to them
    for the module (runs reuse the connection: one Ray start for all these tests). Pickled
    settings carry no password: the nodes' workers read it from their environment, as an
    operator sets it where `ray start` runs."""
    with environment_with({"IMAGE_SEARCH_POSTGRES_PASSWORD": password_server["password"]}):
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
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
) -> None:
    settings = make_server_settings(
        postgres_password=password_server["password"], **process_backend
    )
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
    process_backend: dict[str, str],
    title: str,
) -> None:
    settings = make_server_settings(
        postgres_password=password_server["password"],
        ray_address=two_nodes,
        batch_size=2,
        **process_backend,
    )
    settings.source_directory.mkdir(parents=True)
    index_killing_one(settings, many_photos(settings.source_directory, 40), title)


def test_a_killed_driver_is_finished_by_the_next_run(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
    tmp_path: Path,
) -> None:
    """The driver killed mid-run (its Ray job dies with it); the re-run on the same cluster
    finishes the job, without duplicates."""
    settings = make_server_settings(ray_address=two_nodes, batch_size=2, **process_backend)
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
