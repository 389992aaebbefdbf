"""What a real photo folder and a real machine throw at an index run: odd and broken files,
killed runs, concurrent runs, a database that restarts, and secrets that must not leak."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import (
    assert_one_row_per_file,
    killed_while_held,
    many_photos,
    run_cli,
    start_held,
    start_index,
    stored_rows,
    write_config,
)
from gate import open_gate, wait_until_held
from imagegen import (
    write_bomb,
    write_broken_files,
    write_ignored_entries,
    write_odd_but_valid_files,
    write_photo,
)
from PIL import Image

from image_search import ingest
from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder


def test_odd_and_broken_files(settings: Settings, tmp_path: Path) -> None:
    folder = settings.source_directory
    valid = write_odd_but_valid_files(folder)
    invalid = write_broken_files(folder / "broken") + [write_bomb(folder / "bomb.png")]
    write_ignored_entries(folder)
    config = write_config(tmp_path / "config.json", settings)

    done = run_cli("index", "--env", str(config), "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(f["path"] for f in report["failed"]) == sorted(str(p) for p in invalid)
    reasons = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert "too large" in reasons["bomb.png"] and "empty" in reasons["empty.png"]
    assert report["added"] == len(valid)
    rows = stored_rows(settings)
    assert sorted(r["file_path"] for r in rows) == sorted(str(p) for p in valid)
    assert all(r["file_name"] == Path(r["file_path"]).name for r in rows)  # names verbatim
    rotated = next(r for r in rows if r["file_name"] == "rotated-exif.jpg")
    with Image.open(rotated["processed_path"]) as upright:
        assert upright.height > upright.width  # stored upright, portrait
        red, _, blue = upright.convert("RGB").getpixel((upright.width // 2, 2))
        assert red > 200 and blue < 60  # the red half is on top


def test_a_file_deleted_between_scan_and_read_is_reported(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, monkeypatch
) -> None:
    real_scan = ingest.scan_images

    def scan_then_delete(root: Path, **options):
        found = list(real_scan(root, **options))
        photos[0].unlink()
        return iter(found)

    monkeypatch.setattr(ingest, "scan_images", scan_then_delete)
    report = run_index(settings, shared_embedder)
    assert [f.path for f in report.failed] == [str(photos[0])]
    assert report.added == len(photos) - 1


@pytest.mark.slow
def test_a_killed_run_is_finished_by_the_next_without_duplicates(
    make_settings, tmp_path: Path, process_backend: dict[str, str]
) -> None:
    settings = make_settings(batch_size=2)
    files = many_photos(settings.source_directory, 8)
    config = write_config(tmp_path / "config.json", settings, **process_backend)

    stored = killed_while_held(config, settings, tmp_path / "gate")

    done = run_cli("index", "--env", str(config), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["added"] == len(files) - stored
    assert (summary["unchanged"], summary["updated"]) == (stored, 0)  # not embedded again
    assert_one_row_per_file(settings, files)


@pytest.mark.slow
def test_two_concurrent_runs_store_every_image_once(
    make_settings, tmp_path: Path, process_backend: dict[str, str]
) -> None:
    settings = make_settings(batch_size=3)
    files = many_photos(settings.source_directory, 40)
    config = write_config(tmp_path / "config.json", settings, **process_backend)

    first, second = start_index(config), start_index(config)
    outputs = [p.communicate(timeout=300) for p in (first, second)]

    assert (first.returncode, second.returncode) == (0, 0), outputs
    assert_one_row_per_file(settings, files)


@pytest.mark.slow
def test_a_database_restart_mid_run_is_survived(
    password_server: dict, make_server_settings, tmp_path: Path, process_backend: dict[str, str]
) -> None:
    server = password_server
    settings = make_server_settings(batch_size=2)
    files = many_photos(settings.source_directory, 8)
    config = write_config(tmp_path / "config.json", settings, **process_backend)
    env = {"IMAGE_SEARCH_POSTGRES_PASSWORD": server["password"]}
    with_password = dataclasses.replace(settings, postgres_password=server["password"])

    gate = tmp_path / "gate"
    process = start_held(gate, 3, "index", "--env", str(config), "--json", env=env)
    wait_until_held(gate, process)  # two batches stored, the third about to be written
    server["restart"]()
    open_gate(gate)
    out, err = process.communicate(timeout=300)

    assert process.returncode == 0, err
    assert "reconnecting" in err  # the restart really happened mid-run
    assert json.loads(out)["added"] == len(files)
    assert_one_row_per_file(with_password, files)
    assert server["password"] not in out + err


@pytest.mark.parametrize("command", ["status", "index", "search"])
def test_the_password_never_leaks(
    password_server: dict, make_server_settings, tmp_path: Path, command: str
) -> None:
    server = password_server
    settings = make_server_settings()
    write_photo(settings.source_directory / "one.jpg", seed=1)
    config = write_config(
        tmp_path / "config.json", settings, **{"postgres-password": server["password"]}
    )
    run_cli("index", "--env", str(config))
    args = {
        "status": ["status"],
        "index": ["index"],
        "search": ["search", "--image", str(settings.source_directory / "one.jpg")],
    }
    for debug in ([], ["--debug"]):
        done = run_cli(*args[command], "--env", str(config), *debug)
        assert done.returncode == 0, done.stderr
        assert server["password"] not in done.stdout + done.stderr
    for file in settings.output_directory.rglob("*"):
        if file.is_file():
            assert server["password"].encode() not in file.read_bytes()
