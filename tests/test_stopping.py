"""Stopping a server while its page's Rescan runs (issue 18, item 17): the run ends at a batch
boundary, and the process exits 0, quietly and soon."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    assert_one_row_per_file,
    free_port,
    many_photos,
    row_count,
    run_cli,
    start_python,
    write_config,
)
from gradio_client import Client

from image_search.config import Settings
from image_search.web import RESCAN_STOP_S

HELD_MODEL = Path(__file__).parent / "held_model.py"
GATE_AT_BATCH = 3  # the model waits from the third batch on


def serve_held(config: Path, gate: Path, port: int) -> subprocess.Popen:
    """`serve` (cli.main) whose model waits at `gate` from GATE_AT_BATCH on."""
    held = [str(HELD_MODEL), str(gate), str(GATE_AT_BATCH)]
    return start_python(*held, "serve", "--env", str(config), "--port", str(port))


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("batch_ends", ["soon", "never"])
def test_sigterm_during_a_rescan_stops_it_at_a_batch_boundary_and_exits_0(
    settings: Settings, tmp_path: Path, batch_ends: str, process_backend: dict[str, str]
) -> None:
    """'soon': the batch under way when the signal comes is stored and no other is begun.
    'never': the wait for it is bounded, and it is left out whole."""
    batch = settings.batch_size
    files = many_photos(settings.source_directory, batch * 6)
    config = write_config(tmp_path / "config.json", settings, **process_backend)
    gate = tmp_path / "gate"
    gate.mkdir()
    process = serve_held(config, gate, port := free_port())
    try:
        assert process.stdout is not None
        assert "Serving image-search on" in process.stdout.readline()
        Client(f"http://127.0.0.1:{port}/", verbose=False).submit(api_name="/rescan")
        wait_for(gate / "held", process)
        stored_before = (GATE_AT_BATCH - 1) * batch
        assert row_count(settings) == stored_before  # the next batch is at the gate

        process.send_signal(signal.SIGTERM)  # systemd, docker stop, kill
        signalled = time.monotonic()
        if batch_ends == "soon":
            time.sleep(1)  # the signal is handled while that batch is at the gate
            (gate / "open").touch()
        _, err = process.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err
    assert took < 10, f"stopping took {took:.1f} s"
    assert "Traceback" not in err and "cannot schedule" not in err and "Error" not in err, err
    said = [line for line in err.splitlines() if ": INFO: " not in line]
    if batch_ends == "soon":
        assert said == []
        stored = stored_before + batch
    else:
        assert said == [
            f"image-search: WARNING: the Rescan's current batch did not finish within "
            f"{RESCAN_STOP_S:g} s; stopping without it"
        ]
        stored = stored_before
    assert row_count(settings) == stored

    again = run_cli("index", "--env", str(config))  # the next run does the rest
    assert again.returncode == 0, again.stderr
    assert f"{len(files) - stored} added" in again.stdout
    assert_one_row_per_file(settings, files)
