"""Stopping tells the truth: `index` and `search` stopped by SIGTERM or Ctrl-C exit 143 / 130,
`index` saying what it stored; a server stopped while its page's Rescan runs ends that run at
a batch boundary and exits 0, quietly and without waiting for the rest. The runs are caught
mid-batch at a gate in their model (held_model.py), whatever the machine's speed."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import (
    assert_one_row_per_file,
    free_port,
    many_photos,
    row_count,
    run_cli,
    start_held,
    write_config,
)
from gate import open_gate, wait_for, wait_until_held
from gradio_client import Client

from image_search.config import Settings
from image_search.web import RESCAN_STOP_S

GATE_AT_BATCH = 3  # the model waits from the third batch on

pytestmark = pytest.mark.slow


def ended(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    ("stop", "code", "flags"),
    [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, ["--json"])],
    ids=["sigterm", "ctrl-c"],
)
def test_index_stopped_by_a_signal_says_what_it_stored_and_exits_non_zero(
    settings: Settings,
    tmp_path: Path,
    process_backend: dict[str, str],
    stop: signal.Signals,
    code: int,
    flags: list[str],
) -> None:
    files = many_photos(settings.source_directory, settings.batch_size * 4)
    config = write_config(tmp_path / "config.json", settings, **process_backend)
    gate = tmp_path / "gate"
    index = start_held(gate, GATE_AT_BATCH, "index", "--env", str(config), *flags)
    wait_until_held(gate, index)
    stored = row_count(settings)

    index.send_signal(stop)
    out, err = ended(index)

    assert index.returncode == code, err
    assert stored == (GATE_AT_BATCH - 1) * settings.batch_size == row_count(settings)
    if flags:
        told = json.loads(out)
        assert (told["stopped"], told["scanned"], told["added"]) == (True, len(files), stored)
    else:
        assert out.startswith(f"Stopped: {len(files)} scanned, {stored} added, ")
        assert out.rstrip().endswith("the next run does the rest.")
    assert "Traceback" not in err and "error" not in err, err


def test_search_stopped_by_sigterm_exits_143(
    settings: Settings, photos: list[Path], tmp_path: Path, process_backend: dict[str, str]
) -> None:
    config = write_config(tmp_path / "config.json", settings, **process_backend)
    assert run_cli("index", "--env", str(config)).returncode == 0
    gate = tmp_path / "gate"
    search = start_held(gate, 1, "search", "--env", str(config), "--image", str(photos[0]))
    wait_until_held(gate, search)  # the query's own image, in the model

    search.send_signal(signal.SIGTERM)
    out, err = ended(search)

    assert search.returncode == 143, err
    assert out == "" and "Traceback" not in err, err
    assert not settings.output_directory.exists()  # no result folder of a search not done


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
    port = free_port()
    process = start_held(gate, GATE_AT_BATCH, "serve", "--env", str(config), "--port", str(port))
    try:
        assert process.stdout is not None
        assert "Serving image-search on" in process.stdout.readline()
        Client(f"http://127.0.0.1:{port}/", verbose=False).submit(api_name="/rescan")
        wait_until_held(gate, process)
        stored_before = (GATE_AT_BATCH - 1) * batch
        assert row_count(settings) == stored_before  # the next batch is at the gate

        process.send_signal(signal.SIGTERM)  # systemd, docker stop, kill
        if batch_ends == "soon":
            wait_for(gate / "stopping", process)  # the page was told, the batch still held
            open_gate(gate)
    finally:
        _, err = ended(process)

    assert process.returncode == 0, err
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
