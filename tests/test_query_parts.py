"""Queries that add and subtract (issue 20): `--and` / `--not` parts, each a text or a file,
with `W:` weights. The fake colour model gives exact vectors, so every expected ranking is
computed here from the stored vectors and the parts' own vectors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ranking_by_vectors, run_cli, stored_rows, write_config
from fake_model import (
    PALETTE,
    FakeColourModel,
    colour_vector,
    fake_embedder,
    fake_model_settings,
    index_palette,
    solid_photo,
    text_vector,
)

from image_search.config import Settings
from image_search.errors import ConfigError
from image_search.models import Embedder
from image_search.query import Query, QueryPart, build_filters, parse_part
from image_search.result_folder import QUERY_RECORD_FILE
from image_search.search import Searcher, SearchResult
from image_search.store import open_store

pytestmark = pytest.mark.fast
_tables = itertools.count(1)
TOLERANCE = 1e-4  # float32 vectors in the table

LIBRARY = PALETTE  # no two photos equally alike to any query here (expected_ranking checks)


@pytest.fixture
def model() -> FakeColourModel:
    return FakeColourModel()


@pytest.fixture
def library(tmp_path: Path, data_directory: Path, model: FakeColourModel) -> Settings:
    settings = fake_model_settings(
        tmp_path, data_directory, f"parts_{next(_tables)}", top_k=len(LIBRARY)
    )
    index_palette(settings, model, LIBRARY)
    return settings


def stored(settings: Settings) -> dict[str, np.ndarray]:
    rows = stored_rows(settings)
    return {Path(r["file_path"]).stem: r["embedding"].astype(np.float64) for r in rows}


def expected_ranking(
    settings: Settings, parts: list[tuple[float, np.ndarray]]
) -> tuple[list[str], list[float]]:
    """The ranking the normalised weighted sum of `parts` ((signed weight, vector)) implies
    for the stored vectors; the test data must hold no near-ties."""
    query = sum(weight * vector.astype(np.float64) for weight, vector in parts)
    ranked = ranking_by_vectors(settings, query, gap=10 * TOLERANCE)
    return [Path(path).stem for path, _ in ranked], [score for _, score in ranked]


def search(settings: Settings, embedder: Embedder, query: Query, filters=None) -> SearchResult:
    with open_store(settings) as store:
        return Searcher(settings, store, embedder).search(query, filters=filters or build_filters())


def ranked(result: SearchResult) -> list[str]:
    return [Path(m.file_path).stem for m in result.results]


@pytest.mark.parametrize(
    "parts",
    [
        [("+", 1.0, "red"), ("+", 1.0, "green")],
        [("+", 1.0, "red"), ("-", 1.0, "blue")],
        [("+", 1.0, "white"), ("-", 0.5, "red"), ("+", 0.3, "green")],
        [("+", 2.0, "blue"), ("-", 1.0, "black"), ("-", 0.25, "purple")],
    ],
    ids=str,
)
def test_text_parts_rank_as_their_weighted_sum_says(
    library: Settings, model: FakeColourModel, parts: list[tuple[str, float, str]]
) -> None:
    (_, first_weight, first), *rest = parts
    more = tuple(QueryPart("text", text, weight, 1 if sign == "+" else -1)
                 for sign, weight, text in rest)
    query = Query(more=(QueryPart("text", first, first_weight), *more))
    result = search(library, fake_embedder(model), query)
    signed = [((1 if sign == "+" else -1) * weight, text_vector(text))
              for sign, weight, text in parts]
    names, scores = expected_ranking(library, signed)
    assert ranked(result) == names
    assert [m.score for m in result.results] == pytest.approx(scores, abs=TOLERANCE)


def test_image_text_and_a_subtracted_file_in_one_query(
    library: Settings, model: FakeColourModel, tmp_path: Path
) -> None:
    """--image and --text share their weight as --text-weight says; an indexed file given
    as a part is its stored vector (the model sees only the query image and the text)."""
    image = solid_photo(tmp_path / "query.png", (200, 40, 60))
    subtracted = library.source_directory / "orange.png"
    query = Query(image=image, text="yellow", text_weight=0.3,
                  more=(parse_part(f"0.6:{subtracted}", -1, "--not"),))
    result = search(library, fake_embedder(model), query)
    vectors = stored(library)
    names, scores = expected_ranking(library, [
        (0.7, colour_vector((200, 40, 60))), (0.3, text_vector("yellow")),
        (-0.6, vectors["orange"]),
    ])
    assert ranked(result) == names
    assert [m.score for m in result.results] == pytest.approx(scores, abs=TOLERANCE)
    assert model.image_batches == [1] and model.texts == ["yellow"]
    assert result.description == "0.7 × image + 0.3 × text 'yellow' - 0.6 × like orange.png"


def test_the_result_folder_records_every_part_and_the_filters(
    library: Settings, model: FakeColourModel
) -> None:
    filters = build_filters([library.source_directory], "2000-01", "2100", 0.1)
    query = Query(text="red", more=(QueryPart("text", "green", 0.5),
                                    QueryPart("text", "blue", 2.0, -1)))
    result = search(library, fake_embedder(model), query, filters)
    record = json.loads((result.output_dir / QUERY_RECORD_FILE).read_text(encoding="utf-8"))
    assert record["parts"] == [
        {"sign": "+", "weight": 1.0, "kind": "text", "value": "red"},
        {"sign": "+", "weight": 0.5, "kind": "text", "value": "green"},
        {"sign": "-", "weight": 2.0, "kind": "text", "value": "blue"},
    ]
    assert record["filters"] == {
        "under": [str(library.source_directory)],
        "taken_after": "2000-01-01T00:00:00",
        "taken_before": "2100-01-01T00:00:00",
        "min_score": 0.1,
    }
    assert record["top_k"] == library.top_k
    assert (result.output_dir / "query.txt").read_text(encoding="utf-8") == "red\n"


def test_parts_from_the_command_line(tmp_path: Path) -> None:
    photo = solid_photo(tmp_path / "beach.jpg", (1, 2, 3))
    assert parse_part("a beach", 1, "--and") == QueryPart("text", "a beach")
    assert parse_part("0.5:at night", -1, "--not") == QueryPart("text", "at night", 0.5, -1)
    assert parse_part("2:people", 1, "--and") == QueryPart("text", "people", 2.0)
    assert parse_part("1:2 ratio", 1, "--and") == QueryPart("text", "2 ratio")
    assert parse_part(str(photo), 1, "--and") == QueryPart("like", str(photo))
    assert parse_part(f".25:{photo}", -1, "--not") == QueryPart("like", str(photo), 0.25, -1)
    for given in ("0:people", "0.5:", "  "):
        with pytest.raises(ConfigError, match="--not"):
            parse_part(given, -1, "--not")


def test_a_query_needs_a_positive_part() -> None:
    with pytest.raises(ConfigError, match="--and"):
        Query(more=(QueryPart("text", "people", 1.0, -1),)).check()
    Query(more=(QueryPart("text", "people"),)).check()


def test_and_and_not_on_the_command_line(library: Settings, tmp_path: Path) -> None:
    """Files only, all indexed: their stored vectors, so the command needs no model."""
    folder = library.source_directory
    config = write_config(tmp_path / "config.json", library)
    done = run_cli(
        "search", "--env", str(config), "--json", "--like", str(folder / "teal.png"),
        "--and", f"0.5:{folder / 'yellow.png'}", "--not", str(folder / "blue.png"),
        "--not", f"0.2:{folder / 'pink.png'}",
    )
    assert done.returncode == 0, done.stderr
    vectors = stored(library)
    names, scores = expected_ranking(library, [
        (1.0, vectors["teal"]), (0.5, vectors["yellow"]), (-1.0, vectors["blue"]),
        (-0.2, vectors["pink"]),
    ])
    results = json.loads(done.stdout)["results"]
    assert [Path(r["file_path"]).stem for r in results] == names
    assert [r["score"] for r in results] == pytest.approx(scores, abs=TOLERANCE)
    record = json.loads((Path(json.loads(done.stdout)["output_dir"]) / QUERY_RECORD_FILE)
                        .read_text(encoding="utf-8"))
    assert [(p["sign"], p["weight"], Path(p["value"]).stem) for p in record["parts"]] == [
        ("+", 1.0, "teal"), ("+", 0.5, "yellow"), ("-", 1.0, "blue"), ("-", 0.2, "pink")
    ]
    bad = run_cli("search", "--env", str(config), "--not", "blue")
    assert bad.returncode == 2 and "--and" in bad.stderr and "Traceback" not in bad.stderr


def test_a_part_that_is_neither_indexed_nor_an_image_is_named(
    library: Settings, model: FakeColourModel, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    query = Query(more=(parse_part(str(notes), 1, "--and"),))
    with pytest.raises(ConfigError, match=f"--and {notes}: it is not indexed"):
        search(library, fake_embedder(model), query)
    config = write_config(tmp_path / "config.json", library)
    done = run_cli("search", "--env", str(config), "--text", "red", "--not", str(notes))
    assert done.returncode == 2 and f"--not {notes}: it is not indexed" in done.stderr
