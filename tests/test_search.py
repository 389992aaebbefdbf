"""Searching by image and text, and the result folder (seed steps ⑨–⑪)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import stored_rows
from PIL import Image

from image_search.config import Settings
from image_search.errors import ImageSearchError
from image_search.images import ResizeSpec, prepare_file
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.result_folder import make_result_folder
from image_search.search import Searcher
from image_search.store import open_store

SECRET = "s3cret-Pa55word"


@pytest.fixture
def indexed(settings: Settings, photos: list[Path], shared_embedder: Embedder) -> Settings:
    run_index(settings, shared_embedder)
    return settings


@pytest.fixture
def indexed_run(
    run_settings: tuple[Settings, Embedder], photos: list[Path]
) -> tuple[Settings, Embedder]:
    """`indexed` for each backend and precision (conftest.RUNS)."""
    settings, embedder = run_settings
    run_index(settings, embedder)
    return settings, embedder


def search_image(settings: Settings, embedder: Embedder, image: Path, k: int | None = None):
    with open_store(settings) as store:
        return Searcher(settings, store, embedder).by_image(image, k)


def test_an_indexed_image_finds_itself_first(
    indexed_run: tuple[Settings, Embedder], photos: list[Path]
) -> None:
    indexed, embedder = indexed_run
    for photo in photos:
        result = search_image(indexed, embedder, photo)
        assert result.results[0].file_path == str(photo)
        assert result.results[0].score == pytest.approx(1.0, abs=1e-3)
        assert result.searched == len(photos)


def test_ranking_equals_brute_force_cosine(
    indexed_run: tuple[Settings, Embedder], photos: list[Path], tmp_path: Path
) -> None:
    indexed, embedder = indexed_run
    query = tmp_path / "query.png"
    Image.open(photos[0]).rotate(20).save(query)
    result = search_image(indexed, embedder, query, k=len(photos))

    rows = stored_rows(indexed)
    vectors = np.array([r["embedding"] for r in rows])
    vector = embedder.embed_images([prepare_file(query, ResizeSpec.of(indexed))])[0]
    scores = vectors @ vector
    order = np.argsort(-scores)
    assert [r.file_path for r in result.results] == [rows[i]["file_path"] for i in order]
    np.testing.assert_allclose([r.score for r in result.results], scores[order], atol=1e-5)


def test_result_folder_holds_exactly_the_contract_files(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    settings = make_settings(postgres_password=SECRET)  # embedded: unused, but must not leak
    run_index(settings, shared_embedder)
    result = search_image(settings, shared_embedder, photos[1])

    folder = result.output_dir
    assert folder.parent == settings.output_directory
    datetime.strptime(folder.name, "%Y%m%d-%H%M%S")
    best = photos[1]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "results.jsonl", "query.jpg", "query.json", best.name]
    )
    assert (folder / best.name).read_bytes() == best.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["postgres-password"] == "***"
    assert config["model-name"] == settings.model_name
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert [line["rank"] for line in lines] == list(range(1, settings.top_k + 1))
    assert {tuple(sorted(line)) for line in lines} == {
        ("file_name", "file_path", "rank", "score", "searched", "taken_at")
    }
    assert all(line["searched"] == len(photos) for line in lines)
    with Image.open(folder / "query.jpg") as query:
        assert query.format == "JPEG"
    for file in folder.iterdir():
        assert SECRET.encode() not in file.read_bytes()


def test_two_searches_in_one_second_make_two_folders(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    first = make_result_folder(tmp_path, now)
    second = make_result_folder(tmp_path, now)
    third = make_result_folder(tmp_path, now)
    assert [first.name, second.name, third.name] == [
        "20260102-030405",
        "20260102-030405-2",
        "20260102-030405-3",
    ]


def test_text_query_returns_k_results(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    with open_store(indexed) as store:
        result = Searcher(indexed, store, shared_embedder).by_text("りんごの写真", 3)
    assert len(result.results) == 3
    assert (result.output_dir / "query.txt").read_text(encoding="utf-8") == "りんごの写真\n"
    assert not (result.output_dir / "query.jpg").exists()


def test_missing_original_falls_back_to_processed_jpeg(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    query = tmp_path / "q.png"
    query.write_bytes(photos[2].read_bytes())
    photos[2].unlink()
    result = search_image(indexed, shared_embedder, query)
    assert result.results[0].file_path == str(photos[2])
    assert result.warnings and "gone" in result.warnings[0]
    assert (result.output_dir / f"{photos[2].stem}.processed.jpg").is_file()


def test_searching_an_empty_index_says_how_to_fill_it(
    settings: Settings, tmp_path: Path, shared_embedder: Embedder
) -> None:
    query = tmp_path / "q.png"
    Image.new("RGB", (10, 10)).save(query)
    other = dataclasses.replace(settings, table_name=settings.table_name + "_empty")
    with pytest.raises(ImageSearchError, match="image-search index"):
        search_image(other, shared_embedder, query)
