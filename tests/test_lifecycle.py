"""Library sync and model lifecycle: re-index with another model, schema versions, watch mode,
copies, and the folders image-search writes itself."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    killed_while_held,
    many_photos,
    row_count,
    run_cli,
    start_index,
    stored_rows,
    wait_for_rows,
    write_config,
)
from imagegen import write_photo

from image_search.config import Settings
from image_search.errors import ConfigError, ImageSearchError
from image_search.ingest import run_index, shadow_table_name
from image_search.models import Embedder
from image_search.search import Searcher
from image_search.store import open_store
from image_search.store import schema as schema_module


def counting(embedder: Embedder) -> list[int]:
    """Record how many images each model call receives."""
    calls: list[int] = []
    embed = embedder.embed_images
    embedder.embed_images = lambda images: calls.append(len(images)) or embed(images)
    return calls


def test_reindex_switches_the_table_to_the_new_model(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, remote_code_model: Path
) -> None:
    run_index(settings, shared_embedder)
    other = dataclasses.replace(settings, model_name=str(remote_code_model), dimension=32)
    embedder = Embedder(other.model_name, "cpu", other.dimension)

    report = run_index(other, embedder, reindex=True)

    assert report.added == len(photos)
    with open_store(other) as store:
        info = store.info()
        assert (info.spec.model_name, info.spec.dimension, info.images) == (
            other.model_name,
            32,
            len(photos),
        )
        result = Searcher(other, store, embedder).by_image(photos[2])
        assert result.results[0].file_path == str(photos[2])
        with pytest.raises(ConfigError, match="--reindex"):
            Searcher(settings, store, shared_embedder).by_image(photos[2])
    assert {len(r["embedding"]) for r in stored_rows(other)} == {32}


@pytest.mark.slow
def test_a_killed_reindex_leaves_the_old_vectors_searchable(
    make_settings, tmp_path: Path, remote_code_model: Path
) -> None:
    settings = make_settings(batch_size=2)
    files = many_photos(settings.source_directory, 8)
    old_config = write_config(tmp_path / "old.json", settings)
    assert run_cli("index", "--env", str(old_config)).returncode == 0
    new = dataclasses.replace(settings, model_name=str(remote_code_model))
    new_config = write_config(tmp_path / "new.json", new)
    shadow = dataclasses.replace(new, table_name=shadow_table_name(new.table_name))

    killed_while_held(new_config, shadow, tmp_path / "gate", "--reindex")

    searched = run_cli("search", "--env", str(old_config), "--image", str(files[5]), "--json")
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout)["results"][0]["file_path"] == str(files[5])
    done = run_cli("index", "--env", str(new_config), "--reindex", "--json")
    assert done.returncode == 0, done.stderr
    with open_store(new) as store:
        assert store.info().spec.model_name == new.model_name
        assert store.info().images == len(files)
    assert row_count(shadow) == 0  # the shadow table became the table


def test_copies_run_the_model_once_per_content(settings: Settings) -> None:
    original = write_photo(settings.source_directory / "a.jpg", seed=1)
    for name in ("b.jpg", "c/d.jpg"):
        (settings.source_directory / name).parent.mkdir(exist_ok=True)
        (settings.source_directory / name).write_bytes(original.read_bytes())
    write_photo(settings.source_directory / "other.png", seed=2)
    embedder = Embedder(settings.model_name, "cpu", settings.dimension)
    calls = counting(embedder)

    report = run_index(settings, embedder)

    assert report.added == 4
    assert sum(calls) == 2
    assert len(stored_rows(settings)) == 4


def test_a_database_newer_than_the_code_is_refused(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(
            "UPDATE image_search_meta SET schema_version = 99 WHERE table_name = %s",
            [settings.table_name],
        )
    with pytest.raises(ImageSearchError, match="newer"):
        run_index(settings, shared_embedder)


def test_migrations_run_step_by_step(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, monkeypatch
) -> None:
    run_index(settings, shared_embedder)
    applied: list[int] = []

    def add_note_column(conn, table: str, spec: object) -> None:
        applied.append(3)
        conn.execute(f'ALTER TABLE "{table}" ADD COLUMN note text')

    current = schema_module.SCHEMA_VERSION
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(schema_module, "MIGRATIONS", [*schema_module.MIGRATIONS, add_note_column])
    report = run_index(settings, shared_embedder)

    assert applied == [3] and report.unchanged == len(photos)
    with open_store(settings) as store, store.database.connection() as conn:
        assert store.info().schema_version == current + 1
        conn.execute(f'SELECT note FROM "{settings.table_name}"')


@pytest.mark.slow
def test_watch_mode_follows_the_folder_and_stops_on_ctrl_c(
    settings: Settings, photos: list[Path], tmp_path: Path, process_backend: dict[str, str]
) -> None:
    config = write_config(tmp_path / "config.json", settings, **process_backend)
    process = start_index(config, "--watch")
    wait_for_rows(settings, process)

    def wait_until(condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)

    wait_until(lambda: row_count(settings) == len(photos))
    added = write_photo(settings.source_directory / "new" / "arrived.png", seed=77)
    wait_until(lambda: str(added) in {r["file_path"] for r in stored_rows(settings)})
    photos[0].unlink()
    wait_until(lambda: row_count(settings) == len(photos))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err  # as every command stopped by Ctrl-C
    assert "Stopped watching" in err and "Traceback" not in err
    with open_store(settings) as store:  # kept as missing, out of every search
        assert store.rows.find(str(photos[0])) is None


def test_results_and_data_inside_the_source_folder_are_not_indexed(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    base = make_settings()
    settings = dataclasses.replace(base, output_directory=base.source_directory / "results")
    run_index(settings, shared_embedder)
    with open_store(settings) as store:
        Searcher(settings, store, shared_embedder).by_image(photos[0])
    report = run_index(settings, shared_embedder)
    assert (report.scanned, report.added) == (len(photos), 0)


def test_status_shows_last_index_time_and_database_size(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    assert run_cli("index", "--env", str(config)).returncode == 0
    done = run_cli("status", "--env", str(config), "--json")
    status = json.loads(done.stdout)
    assert status["images"] == len(photos)
    assert status["last_indexed_at"] and status["database_size"] > 0


def test_reindex_keeps_images_indexed_from_other_folders(
    settings: Settings,
    photos: list[Path],
    shared_embedder: Embedder,
    remote_code_model: Path,
    tmp_path: Path,
) -> None:
    elsewhere = [write_photo(tmp_path / "elsewhere" / f"e{i}.png", seed=60 + i) for i in range(3)]
    run_index(settings, shared_embedder)
    run_index(settings, shared_embedder, source=tmp_path / "elsewhere")
    elsewhere[0].unlink()  # gone since: a re-index drops it like any index would
    other = dataclasses.replace(settings, model_name=str(remote_code_model))
    embedder = Embedder(other.model_name, "cpu", other.dimension)

    report = run_index(other, embedder, reindex=True)

    assert report.added == len(photos) + 2
    kept = sorted(str(p) for p in [*photos, *elsewhere[1:]])
    assert sorted(r["file_path"] for r in stored_rows(other)) == kept
