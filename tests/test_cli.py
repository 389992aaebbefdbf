"""The console command: contracts, exit codes, the postgres-* server path, a closed pipe."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest
from conftest import run_cli, start_python, write_config
from imagegen import write_broken_files

from image_search.config import Settings


def index_json(config: Path, *extra: str) -> dict:
    done = run_cli("index", "--env", str(config), "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_index_status_and_reindex_through_the_cli(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    broken = write_broken_files(settings.source_directory / "broken")
    config = write_config(tmp_path / "config.json", settings)

    first = index_json(config)
    # The contract's keys; more may follow (missing files, what was left out).
    assert {"scanned", "added", "updated", "unchanged", "removed", "failed"} <= set(first)
    assert first["added"] == len(photos)
    assert sorted(f["path"] for f in first["failed"]) == sorted(str(p) for p in broken)
    assert all(f["error"] for f in first["failed"])

    status = run_cli("status", "--env", str(config), "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["images"] == len(photos)
    assert (shown["table"], shown["model"], shown["dimension"]) == (
        settings.table_name,
        settings.model_name,
        settings.dimension,
    )

    second = index_json(config)
    assert (second["added"], second["unchanged"]) == (0, len(photos))


def test_search_command_prints_the_contract_json(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    index_json(config)
    done = run_cli(
        "search", "--env", str(config), "--image", str(photos[0]), "--top-k", "3", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"output_dir", "searched", "results"}
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    assert result["results"][0]["file_path"] == str(photos[0])
    assert Path(result["output_dir"], photos[0].name).is_file()


@pytest.mark.parametrize(
    ("config_values", "env", "key"),
    [
        ({"colour": "red"}, {}, "colour"),
        ({"dimension": "many"}, {}, "dimension"),
        ({}, {"IMAGE_SEARCH_TOP_K": "ten"}, "top-k"),
        ({"table-name": "images; DROP TABLE images"}, {}, "table-name"),
        ({"device": "tpu"}, {}, "device"),
    ],
)
def test_configuration_errors_name_the_key_and_exit_2(
    tmp_path: Path, config_values: dict, env: dict, key: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_values))
    done = run_cli("status", "--env", str(config), env=env)
    assert done.returncode == 2
    assert f"'{key}'" in done.stderr
    assert "Traceback" not in done.stderr


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    from image_search.config import load_settings

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"top-k": 3, "batch-size": 5, "resize-width": 100}))
    env = {"IMAGE_SEARCH_TOP_K": "4", "IMAGE_SEARCH_BATCH_SIZE": "6"}
    settings = load_settings(config, {"top-k": "7"}, env)
    assert (settings.top_k, settings.batch_size, settings.resize_width) == (7, 6, 100)
    assert settings.resize_height == Settings().resize_height


def test_server_path_with_password(
    password_server: dict, make_server_settings, photos: list[Path], tmp_path: Path
) -> None:
    server = password_server
    settings = make_server_settings()
    settings.source_directory.mkdir(exist_ok=True)
    config = write_config(tmp_path / "config.json", settings)
    env = {"IMAGE_SEARCH_POSTGRES_PASSWORD": server["password"]}

    done = run_cli("index", "--env", str(config), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == len(photos)
    status = run_cli("status", "--env", str(config), env=env)
    assert status.returncode == 0
    assert f"images: {len(photos)}" in status.stdout
    assert server["password"] not in status.stdout + status.stderr
    assert "***" in status.stdout

    wrong = run_cli("status", "--env", str(config), env={"IMAGE_SEARCH_POSTGRES_PASSWORD": "no"})
    assert wrong.returncode == 1
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0]


def test_unreachable_database_is_one_line_and_exit_1(make_settings, tmp_path: Path) -> None:
    from conftest import free_port

    settings = make_settings(
        postgres_host="127.0.0.1", postgres_port=free_port(), postgres_password="hunter2-secret"
    )
    config = write_config(tmp_path / "config.json", settings)
    done = run_cli("status", "--env", str(config))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0]
    assert "hunter2-secret" not in done.stderr + done.stdout


def test_help_lists_commands_and_keys() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("index", "search", "serve", "status", "--env"):
        assert word in done.stdout
    index_help = run_cli("index", "--help").stdout
    for flag in ("--source", "--json", "--keep-missing", "--reindex", "--watch"):
        assert flag in index_help
    keys = run_cli("help", "config").stdout  # every key, in one place
    for key in ("model-name", "postgres-host", "server-auth", "vector-type"):
        assert f"  {key} " in keys
    for flag in ("--model-name", "--postgres-host", "--vector-type"):  # and a flag everywhere
        assert "expected one argument" in run_cli("status", flag).stderr
    assert "unrecognized arguments" in run_cli("status", "--no-such-key", "x").stderr


def test_bad_query_image_is_a_clear_error(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", dataclasses.replace(settings))
    index_json(config)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    done = run_cli("search", "--env", str(config), "--image", str(bad))
    assert done.returncode == 2
    assert "bad.jpg" in done.stderr and "Traceback" not in done.stderr


def test_output_piped_to_a_reader_that_stops_early_ends_quietly() -> None:
    """`image-search help config | head -1`: the reader has gone before the first line (the
    pipe is closed before Python has even started), so every write meets a closed pipe."""
    process = start_python("-m", "image_search", "help", "config")
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == ""
