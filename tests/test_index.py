"""The index run against the real embedded PostgreSQL and a real (tiny) transformers model."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import stored_rows
from imagegen import write_broken_files, write_photo
from tiny_models import EMBEDDING_DIM

from image_search.config import Settings
from image_search.errors import ConfigError
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.store import open_store


def fresh_embedder(settings: Settings) -> Embedder:
    return Embedder(settings.model_name, settings.device, settings.dimension)


def test_mixed_folder_gives_one_row_per_image(settings: Settings, photos: list[Path]) -> None:
    report = run_index(settings, fresh_embedder(settings))

    assert (report.scanned, report.added, report.failed) == (len(photos), len(photos), [])
    rows = stored_rows(settings)
    assert sorted(r["file_path"] for r in rows) == sorted(str(p) for p in photos)
    for row in rows:
        assert row["file_name"] == Path(row["file_path"]).name
        assert row["path_hash"] == hashlib.sha256(row["file_path"].encode()).hexdigest()
        content = Path(row["file_path"]).read_bytes()
        assert row["content_hash"] == hashlib.sha256(content).hexdigest()
        processed = Path(row["processed_path"])
        assert processed.is_file() and processed.suffix == ".jpg"
        assert settings.data_directory.resolve() in processed.parents


def test_second_run_adds_nothing_and_never_loads_the_model(
    settings: Settings, photos: list[Path]
) -> None:
    run_index(settings, fresh_embedder(settings))
    originals = {p: p.read_bytes() for p in photos}
    again = fresh_embedder(settings)

    report = run_index(settings, again)

    assert (report.added, report.updated, report.unchanged) == (0, 0, len(photos))
    assert not again.loaded
    assert len(stored_rows(settings)) == len(photos)
    assert {p: p.read_bytes() for p in photos} == originals  # originals never modified


def test_vectors_are_unit_length_of_the_configured_dimension(
    make_settings, photos: list[Path]
) -> None:
    settings = make_settings(dimension=32)  # Matryoshka cut of the 64-d model
    run_index(settings, fresh_embedder(settings))
    vectors = np.array([r["embedding"] for r in stored_rows(settings)])
    assert vectors.shape == (len(photos), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_each_image_is_its_own_nearest_neighbour(
    run_settings: tuple[Settings, Embedder], photos: list[Path]
) -> None:
    settings, embedder = run_settings  # each backend and precision (conftest.RUNS)
    run_index(settings, embedder)
    with open_store(settings) as store:
        for row in stored_rows(settings):
            best = store.rows.nearest(row["embedding"], 1)[0]
            assert best.file_path == row["file_path"]
            assert best.score == pytest.approx(1.0, abs=1e-4)


def test_broken_files_are_reported_and_the_run_goes_on(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    broken = write_broken_files(settings.source_directory / "broken")
    report = run_index(settings, shared_embedder)
    assert report.added == len(photos)
    assert sorted(f.path for f in report.failed) == sorted(str(p) for p in broken)
    assert all(f.error for f in report.failed)
    assert len(stored_rows(settings)) == len(photos)


def test_a_different_model_or_dimension_is_refused(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, remote_code_model: Path
) -> None:
    run_index(settings, shared_embedder)
    for change in ({"model_name": str(remote_code_model)}, {"dimension": 32}):
        other = dataclasses.replace(settings, **change)
        embedder = fresh_embedder(other)
        with pytest.raises(ConfigError, match="--table-name") as refused:
            run_index(other, embedder)
        assert "--reindex" in str(refused.value)
        assert not embedder.loaded


def test_a_dimension_above_the_models_is_a_configuration_error(
    make_settings, photos: list[Path]
) -> None:
    settings = make_settings(dimension=EMBEDDING_DIM * 2)
    with pytest.raises(ConfigError, match="dimension"):
        run_index(settings, fresh_embedder(settings))


def test_remote_code_model_folder_loads_and_embeds(
    make_settings, photos: list[Path], remote_code_model: Path
) -> None:
    settings = make_settings(model_name=str(remote_code_model))
    embedder = fresh_embedder(settings)
    report = run_index(settings, embedder)
    assert report.added == len(photos)
    assert type(embedder.model()).__name__ == "RemoteCodeModel"
    text = embedder.embed_texts(["赤いりんご"])  # a Japanese query goes through the text tower
    assert text.shape == (1, EMBEDDING_DIM)


def test_changed_deleted_moved_and_copied_files(settings: Settings, photos: list[Path]) -> None:
    run_index(settings, fresh_embedder(settings))
    folder = settings.source_directory
    changed, deleted, moved = photos[0], photos[1], photos[2]
    write_photo(changed, seed=100)
    deleted.unlink()
    moved_to = folder / "renamed" / moved.name
    moved_to.parent.mkdir()
    moved.rename(moved_to)
    copy = folder / "copy-of-red.jpg"
    copy.write_bytes(photos[3].read_bytes())

    calls: list[int] = []
    embedder = fresh_embedder(settings)
    original = embedder.embed_images
    embedder.embed_images = lambda images: calls.append(len(images)) or original(images)
    report = run_index(settings, embedder)

    # The moved file's old row goes at once (its content is stored under its new name); the
    # deleted one's is kept as missing, out of searches (see test_missing_files.py).
    assert (report.added, report.updated, report.removed, report.missing) == (2, 1, 1, 1)
    assert sum(calls) == 1  # only the changed content went through the model
    on_disk = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    assert sorted(r["file_path"] for r in stored_rows(settings)) == sorted([*on_disk, str(deleted)])
    with open_store(settings) as store:
        assert store.rows.find(str(deleted)) is None
        assert store.info().images == len(on_disk)


def test_keep_missing_keeps_rows_of_deleted_files_past_their_grace_period(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    photos[0].unlink()
    run_index(settings, shared_embedder)
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(
            f"UPDATE \"{settings.table_name}\" SET missing_since = now() - interval '1 year' "
            "WHERE missing_since IS NOT NULL"
        )
    report = run_index(settings, shared_embedder, keep_missing=True)
    assert (report.removed, report.missing) == (0, 1)
    assert len(stored_rows(settings)) == len(photos)


def test_a_long_run_announces_how_long_it_will_take(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, monkeypatch, caplog
) -> None:
    from image_search import ingest

    monkeypatch.setattr(ingest, "ANNOUNCE_AFTER_S", 0.0)
    caplog.set_level("INFO", logger="image_search")
    run_index(settings, shared_embedder)
    announcements = [r.message for r in caplog.records if "minutes left" in r.message]
    assert len(announcements) == 1
    assert f"embedding {len(photos) - settings.batch_size} images at" in announcements[0]


def test_halfvec_storage_still_finds_each_image_first(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    settings = make_settings(vector_type="halfvec")
    run_index(settings, shared_embedder)
    with open_store(settings) as store, store.database.connection() as conn:
        column = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
            [settings.table_name],
        ).fetchone()[0]
        assert column == f"halfvec({EMBEDDING_DIM})"
        for row in stored_rows(settings):
            best = store.rows.nearest(row["embedding"], 1)[0]
            assert best.file_path == row["file_path"]
            assert best.score == pytest.approx(1.0, abs=1e-3)
    as_float32 = dataclasses.replace(settings, vector_type="vector")
    with pytest.raises(ConfigError, match="stored as halfvec"):
        run_index(as_float32, shared_embedder)


def test_an_empty_table_follows_a_new_model(make_settings, photos: list[Path], tmp_path) -> None:
    from image_search.errors import ImageSearchError

    broken = make_settings(model_name=str(tmp_path / "no-such-model"), dimension=1024)
    with pytest.raises(ImageSearchError, match="cannot load model") as failed:
        run_index(broken, fresh_embedder(broken))
    assert "\n" not in str(failed.value)  # one line, whatever the library said
    settings = make_settings()  # the same table, now with a model that loads
    report = run_index(settings, fresh_embedder(settings))
    assert report.added == len(photos)
    with open_store(settings) as store:
        assert store.info().spec.dimension == settings.dimension
