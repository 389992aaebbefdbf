"""The index run on a two-node Ray cluster on this machine, against the password-protected
server: the rows, vectors and processed JPEGs of an in-process run, even when a worker or the
driver is killed. (test_cluster.py: a private instance.)"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
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
from ray.cluster_utils import Cluster  # Ray, a dev dependency: never skipped
from ray_runs import assert_same_as_in_process, index

from image_search.config import Settings
from image_search.ingest import IndexReport
from image_search.models import Embedder
from image_search.store import Database
from image_search.web import WebApp

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def two_nodes(password_server: dict) -> Iterator[str]:
    """Two Ray nodes on this machine, one CPU each, for the module's runs: one actor embeds
    (half the CPUs) while one task prepares. Pickled settings carry no password: the nodes'
    workers read it from their environment, as an operator sets it where `ray start` runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGE_SEARCH_POSTGRES_PASSWORD", password_server["password"])
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


@dataclasses.dataclass(frozen=True)
class GatedFolder:
    """Eight photos to index on the two nodes in batches of two, and a gate for the workers
    (ray_gate.py). `settings` hold the password (the test's own reads, runs in this
    process); `config` does not (a run of its own gets it from `env`)."""

    settings: Settings
    config: Path
    files: list[Path]
    gate: Path
    password: str

    def env(self, stage: str, at: int) -> dict[str, str]:
        """For a run of its own: the password, and the gate at the `at`th batch of `stage`."""
        gated = ray_gate.environment(self.gate, stage, at)
        return {"IMAGE_SEARCH_POSTGRES_PASSWORD": self.password, **gated}

    def gate_this_process(self, monkeypatch: pytest.MonkeyPatch, stage: str, at: int) -> None:
        """For runs in this process: the driver's process, which they start, gets the gate."""
        for name, value in ray_gate.environment(self.gate, stage, at).items():
            monkeypatch.setenv(name, value)

    def batch_held_by(self, pid: int) -> set[str]:
        """The files of the batch the worker `pid` holds at the gate (its last)."""
        return set([b for b in ray_gate.batches(self.gate) if b["pid"] == pid][-1]["files"])


@pytest.fixture
def gated(
    two_nodes: str,
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
    tmp_path: Path,
) -> GatedFolder:
    settings = make_server_settings(ray_address=two_nodes, batch_size=2, **process_backend)
    files = many_photos(settings.source_directory, 8)
    config = write_config(tmp_path / "config.json", settings)
    gate = tmp_path / "gate"
    gate.mkdir()
    password = password_server["password"]
    with_password = dataclasses.replace(settings, postgres_password=password)
    return GatedFolder(with_password, config, files, gate, password)


def job_ended(holder: int) -> None:
    """Until the worker that held at the gate is gone: its Ray job ended with its driver."""
    with suppress(psutil.NoSuchProcess):
        psutil.Process(holder).wait(timeout=120)


@pytest.mark.parametrize("stage", ["embed", "prepare"], ids=["embedding-actor", "prepare-task"])
def test_a_killed_worker_still_ends_with_one_row_per_image(
    gated: GatedFolder, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that holds the stage's second batch is killed with it: Ray gives that
    batch to another worker, and the run still stores each file exactly once."""
    gated.gate_this_process(monkeypatch, stage, at=2)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = index(gated.settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        victim = wait_until_held(gated.gate, runner, timeout=180)
        held = gated.batch_held_by(victim)
        psutil.Process(victim).kill()
    finally:
        open_gate(gated.gate)
        runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert isinstance(report, IndexReport)
    assert report.added == len(gated.files) and not report.failed
    assert_one_row_per_file(gated.settings, gated.files)
    logged = ray_gate.batches(gated.gate)
    again = [b for b in logged if b["pid"] != victim and held <= set(b["files"])]
    assert again, f"the killed worker's batch {sorted(held)} was never done again"


def test_a_killed_driver_is_finished_by_the_next_run(gated: GatedFolder) -> None:
    """The run killed while the actor holds its third batch: its Ray job dies with it (the
    held batch is never stored), and the next run on the same cluster stores the rest,
    without duplicates."""
    env = gated.env("embed", at=3)
    run = start_index(gated.config, env=env)
    holder = wait_until_held(gated.gate, run, timeout=180)
    stored = row_count(gated.settings)
    logged = ray_gate.batches(gated.gate)  # one actor: the batches came to it one by one
    assert logged[-1]["pid"] == holder
    assert stored == sum(len(b["files"]) for b in logged[:-1]) > 0  # those before, whole
    run.kill()
    run.communicate()
    job_ended(holder)
    assert row_count(gated.settings) == stored

    done = run_cli_process("index", "--env", str(gated.config), "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["added"] == len(gated.files) - stored
    assert (summary["unchanged"], summary["updated"]) == (stored, 0)  # not embedded again
    assert_one_row_per_file(gated.settings, gated.files)


def test_index_on_ray_stopped_by_sigterm_exits_143_and_says_what_it_stored(
    gated: GatedFolder,
) -> None:
    run = start_index(gated.config, env=gated.env("embed", at=2))
    holder = wait_until_held(gated.gate, run, timeout=180)
    [driver] = psutil.Process(run.pid).children()
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)

    assert run.returncode == 143, err
    assert not driver.is_running()  # stopped with the run, not left behind
    job_ended(holder)
    stored = row_count(gated.settings)
    told = json.loads(out)
    assert told["stopped"] is True and told["scanned"] == len(gated.files)
    # What the run heard of: a batch finished as the signal came may be stored unheard of.
    assert told["added"] <= stored < len(gated.files)
    assert "Traceback" not in err, err


def driver_processes() -> list[psutil.Process]:
    """This process's Ray drivers (cluster.DriverProcess) still running."""
    drivers = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "image_search.cluster import drive" in " ".join(child.cmdline()):
                drivers.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # it has ended (a zombie is a process over, not yet reaped)
    return drivers


def test_a_rescan_on_ray_stops_with_the_page_and_leaves_the_servers_streams_alone(
    gated: GatedFolder,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The page's Rescan on Ray, from its thread: the page closing while the actor holds the
    second batch stops the run at once (the driver gone, the held batch never stored), and
    the next Rescan does the rest. Meanwhile nothing of this process's standard streams is
    swapped, and nothing of Ray's reaches them."""
    settings, files = gated.settings, gated.files
    gated.gate_this_process(monkeypatch, "embed", at=2)

    def streams() -> tuple[object, ...]:
        return sys.stdout, sys.stderr, *[os.fstat(fd)[:2] for fd in (1, 2)]  # mode, inode

    before = streams()
    with Database(settings) as database:
        page = WebApp(settings, Embedder.from_settings(settings), database)
        notes: list[str] = []
        handler = threading.Thread(target=lambda: notes.extend(n for n, _ in page.rescan()))
        handler.start()
        holder = wait_until_held(gated.gate, handler, timeout=180)
        assert streams() == before  # mid-run, the driver running
        stored = row_count(settings)
        with caplog.at_level(logging.WARNING):
            page.stop_rescans()
        assert not driver_processes()
        assert caplog.records == []  # no "did not finish within 5 s": it did
        handler.join(timeout=60)
        assert notes[-1] == "Rescan stopped: the server is shutting down."
        job_ended(holder)
        assert row_count(settings) == stored

        again = [note for note, _ in WebApp(settings, page.embedder, database).rescan()]
    finished = f"Rescan finished: {len(files)} scanned, {len(files) - stored} added"
    assert again[-1].startswith(finished)
    assert_one_row_per_file(settings, files)
    assert streams() == before
    assert capfd.readouterr() == ("", "")
