"""The index run on a two-node Ray cluster on this machine, against the password-protected
server: the rows, vectors and processed JPEGs of an in-process run, even when a worker or the
driver is killed. (test_cluster.py: a private instance.)"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
import ray_gate
from conftest import (
    assert_one_row_per_file,
    many_photos,
    row_count,
    run_cli_process,
    start_index,
    write_config,
)
from gate import open_gate, wait_until_held
from ray.cluster_utils import Cluster
from ray_runs import assert_same_as_in_process, index

from image_search.config import Settings
from image_search.ingest import IndexReport

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """Two Ray nodes on this machine, one CPU each, for the module's runs: one actor embeds
    (concurrency: half the CPUs) while one task prepares."""
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
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


def batch_held_by(gate: Path, pid: int) -> set[str]:
    """The files of the batch the worker `pid` holds at the gate (its last)."""
    return set([b for b in ray_gate.batches(gate) if b["pid"] == pid][-1]["files"])


@pytest.mark.parametrize("stage", ["embed", "prepare"], ids=["embedding-actor", "prepare-task"])
def test_a_killed_worker_still_ends_with_one_row_per_image(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
    stage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker that holds the stage's second batch is killed with it: Ray gives that
    batch to another worker, and the run still stores each file exactly once."""
    settings = make_server_settings(
        postgres_password=password_server["password"],
        ray_address=two_nodes,
        batch_size=2,
        **process_backend,
    )
    files = many_photos(settings.source_directory, 8)
    gate = tmp_path / "gate"
    gate.mkdir()
    for name, value in ray_gate.environment(gate, stage, at=2).items():
        monkeypatch.setenv(name, value)  # the driver's process, started by the run, gets it
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = index(settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        victim = wait_until_held(gate, runner, timeout=180)
        held = batch_held_by(gate, victim)
        psutil.Process(victim).kill()
    finally:
        open_gate(gate)
        runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert isinstance(report, IndexReport)
    assert report.added == len(files) and not report.failed
    assert_one_row_per_file(settings, files)
    again = [b for b in ray_gate.batches(gate) if b["pid"] != victim and held <= set(b["files"])]
    assert again, f"the killed worker's batch {sorted(held)} was never done again"


def test_a_killed_driver_is_finished_by_the_next_run(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
    tmp_path: Path,
) -> None:
    """The run killed while the actor holds its third batch: its Ray job dies with it (the
    held batch is never stored), and the next run on the same cluster stores the rest,
    without duplicates."""
    settings = make_server_settings(ray_address=two_nodes, batch_size=2, **process_backend)
    files = many_photos(settings.source_directory, 8)
    config = write_config(tmp_path / "config.json", settings)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {
        "IMAGE_SEARCH_POSTGRES_PASSWORD": password_server["password"],
        **ray_gate.environment(gate, "embed", at=3),
    }
    with_password = dataclasses.replace(settings, postgres_password=password_server["password"])

    run = start_index(config, env=env)
    holder = wait_until_held(gate, run, timeout=180)
    stored = row_count(with_password)
    logged = ray_gate.batches(gate)  # one actor: the batches came to it one by one
    assert logged[-1]["pid"] == holder
    assert stored == sum(len(b["files"]) for b in logged[:-1]) > 0  # those before, whole
    run.kill()
    run.communicate()
    with suppress(psutil.NoSuchProcess):
        psutil.Process(holder).wait(timeout=120)  # the job ended with its driver
    assert row_count(with_password) == stored

    done = run_cli_process("index", "--env", str(config), "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == len(files) - stored
    assert_one_row_per_file(with_password, files)
