"""The index run on Ray (the ray-address key) in a private instance (`local`): the rows,
vectors and processed JPEGs of an in-process run; the key's checks and one-line errors.
(test_cluster_nodes.py: a two-node cluster.)"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import ray  # a dev dependency: without it this tier fails here, loudly, never skips
from conftest import many_photos, run_cli, run_cli_process, write_config
from ray_runs import assert_same_as_in_process

from image_search import cluster
from image_search.cluster import DriverJob, DriverProcess
from image_search.config import Settings, load_settings
from image_search.errors import ConfigError, ImageSearchError
from image_search.ingest import Progress, RunStopped

pytestmark = pytest.mark.cluster


# ---------------------------------------------------------------- local: a private instance


def test_local_gives_the_rows_of_an_in_process_run(
    make_server_settings: Callable[..., Settings],
    password_server: dict,
    process_backend: dict[str, str],
) -> None:
    assert not ray.is_initialized()
    settings = make_server_settings(
        postgres_password=password_server["password"], **process_backend
    )
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


def test_gpu_clusters_get_one_embedding_actor_per_gpu() -> None:
    from image_search.cluster import embedding_actors

    class Resources:
        def __init__(self, **resources: float) -> None:
            self.resources = resources

        def cluster_resources(self) -> dict[str, float]:
            return self.resources

    assert embedding_actors(Resources(CPU=32, GPU=4)) == ({"num_gpus": 1}, 4)
    assert embedding_actors(Resources(CPU=8)) == ({"num_cpus": 1}, 4)
    assert embedding_actors(Resources(CPU=1)) == ({"num_cpus": 1}, 1)


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


# ---------------------------------------------------------------- the driver's process


def test_a_driver_that_ends_without_a_word_is_one_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last line of output is the reason given (all of it is in the debug log)."""
    crash = "import sys; print('Fatal Python error: Segmentation fault'); sys.exit(3)"
    monkeypatch.setattr(cluster, "DRIVER_PROGRAM", crash)
    order = DriverJob(settings, settings.table_name, [], debug=False)
    with pytest.raises(ImageSearchError) as raised, DriverProcess(order) as driver:
        driver.wait_until_connected(lambda: None)
    assert str(raised.value) == (
        "the Ray driver ended unexpectedly (exit code 3): Fatal Python error: Segmentation "
        "fault (run with --debug for its output)"
    )


@pytest.mark.parametrize(
    ("program", "ends_by"),
    [
        ("import sys; sys.stdin.buffer.read()", 0),  # stops when asked: its stdin closed
        ("import time; time.sleep(600)", -signal.SIGKILL),  # does not: killed
    ],
    ids=["asked", "killed"],
)
def test_a_stop_request_ends_the_driver_while_the_run_waits_for_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, program: str, ends_by: int
) -> None:
    monkeypatch.setattr(cluster, "DRIVER_PROGRAM", program)
    monkeypatch.setattr(cluster, "DRIVER_STOP_S", 0.5)
    stop = threading.Event()
    stop.set()  # the page is closing
    order = DriverJob(settings, settings.table_name, [], debug=False)
    with pytest.raises(RunStopped), DriverProcess(order) as driver:
        driver.wait_until_connected(Progress(stop=stop).check_stop)
    assert driver.process.returncode == ends_by
