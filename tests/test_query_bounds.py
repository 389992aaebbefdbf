"""Queries are finite or refused (issue 24 item 5) and parts that are not what they seem
(issue 25 item 7): weights out of range, parts that cancel out, parts that look like files
but are none, `--under` a folder that is not there. Each is refused with exit 2 and one line;
where that can be known from the command line alone, before the database starts. No NaN or
infinity ever reaches what a search prints or writes."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import free_port, run_cli, write_config
from fake_model import FakeColourModel, fake_embedder, fake_model_settings, write_palette
from test_query_parts import LIBRARY, search

from image_search.config import Settings
from image_search.errors import ConfigError
from image_search.ingest import run_index
from image_search.query import Query, QueryPart, parse_part
from image_search.store import open_store

pytestmark = pytest.mark.fast
_tables = itertools.count(1)


@pytest.fixture
def library(tmp_path: Path, data_directory: Path) -> Settings:
    """The palette, plus a byte-identical copy of red.png (the same stored vector)."""
    settings = fake_model_settings(
        tmp_path, data_directory, f"bounds_{next(_tables)}", top_k=len(LIBRARY)
    )
    photos = write_palette(settings.source_directory, LIBRARY)
    shutil.copyfile(photos["red"], settings.source_directory / "red-copy.png")
    run_index(settings, fake_embedder(FakeColourModel()))
    return settings


@pytest.fixture
def unreachable(make_settings, tmp_path: Path) -> Path:
    """A config whose database nothing listens for: a command that reached for it would
    exit 1 with 'cannot connect', so exit 2 and no such line is a refusal made before."""
    settings = make_settings(postgres_host="127.0.0.1", postgres_port=free_port())
    return write_config(tmp_path / "config.json", settings)


def refused_early(config: Path, *argv: str) -> str:
    """The one line of a request refused with exit 2 before the database was reached."""
    done = run_cli("search", "--env", str(config), *argv)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" not in lines[0], done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "weight",
    ["1" + "0" * 200, "9" * 400, "1e200", "nan", "inf", "-inf", "-1", "0", "0.0000001"],
    ids=["10^200", "400-nines", "1e200", "nan", "inf", "-inf", "-1", "0", "1e-7"],
)
@pytest.mark.parametrize("flag", ["--and", "--not"])
def test_a_weight_out_of_range_is_refused_before_the_database(
    unreachable: Path, weight: str, flag: str
) -> None:
    line = refused_early(unreachable, "--text", "red", flag, f"{weight}:a cat")
    assert f"{flag} '{weight}:a cat': the weight must be a number from 0.001 to 1000" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--text", "a cat", "--not", "a cat"],
        ["--text", "a cat", "--not", " a cat "],
        ["--and", "2:a cat", "--not", "a cat", "--not", "a cat"],
        ["--like", "{photo}", "--not", "{photo}"],
        ["--image", "{photo}", "--not", "{photo}"],
    ],
    ids=["text", "spaces", "weights", "like", "image-and-file"],
)
def test_parts_that_cancel_are_refused_before_the_database(
    unreachable: Path, tmp_path: Path, argv: list[str]
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"any file: it is never read")
    line = refused_early(unreachable, *[a.format(photo=photo) for a in argv])
    assert "cancel each other out" in line and "adds up to (almost) nothing" in line


def test_parts_whose_vectors_cancel_are_refused_before_anything_is_written(
    library: Settings, tmp_path: Path
) -> None:
    """A photo and its byte-identical copy are one vector under two names: only their
    vectors show that the query is nothing (the database has started by then)."""
    red, copy = (library.source_directory / name for name in ("red.png", "red-copy.png"))
    config = write_config(tmp_path / "config.json", library)
    for as_json in ([], ["--json"]):
        done = run_cli("search", "--env", str(config), "--like", str(red), "--not", str(copy),
                       *as_json)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and "nan" not in done.stderr.lower()
        assert "cancel each other out" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not library.output_directory.exists()  # no result folder, not even an empty one


def test_texts_with_one_vector_cancel_too(library: Settings) -> None:
    """The fake model reads "Red" and "red" alike: equal vectors from different words."""
    query = Query(text="Red", more=(QueryPart("text", "red", 1.0, -1),))
    with pytest.raises(ConfigError, match="1 × text 'Red' - 1 × text 'red'"):
        search(library, fake_embedder(FakeColourModel()), query)
    assert not library.output_directory.exists()


def test_a_part_that_nearly_cancels_still_searches(library: Settings, tmp_path: Path) -> None:
    """Half of a photo taken away leaves half of it: a direction, searched as one."""
    red, copy = (library.source_directory / name for name in ("red.png", "red-copy.png"))
    config = write_config(tmp_path / "config.json", library)
    done = run_cli("search", "--env", str(config), "--json", "--like", str(red), "--not",
                   f"0.5:{copy}")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert {Path(r["file_path"]).name for r in results[:2]} == {"red.png", "red-copy.png"}
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_a_stored_vector_without_direction_never_reaches_the_output(
    library: Settings, tmp_path: Path
) -> None:
    """A zero vector in the table (a model's fault) has no cosine similarity: it is left out
    with a warning, never printed, written or returned as NaN. (The HNSW index leaves such a
    vector out by itself; the exact scan that a filter can fall back to does not.)"""
    with open_store(library) as store, store.database.connection() as conn:
        conn.execute(
            f"UPDATE {library.table_name} SET embedding = %s::vector WHERE file_name = 'blue.png'",
            ["[" + ",".join(["0"] * 8) + "]"],
        )
    config = write_config(tmp_path / "config.json", library)
    like = library.source_directory / "red.png"
    done = run_cli("search", "--env", str(config), "--json", "--like", str(like), "--top-k", "20",
                   "--under", str(library.source_directory))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)  # NaN is not JSON: this would fail on it
    scores = [r["score"] for r in answer["results"]]
    assert len(scores) == len(LIBRARY) and all(math.isfinite(s) for s in scores)  # 10 less 1
    assert [r["rank"] for r in answer["results"]] == list(range(1, len(LIBRARY) + 1))
    assert "blue.png" not in done.stdout and "1 stored image(s) left out" in done.stderr
    written = (Path(answer["output_dir"]) / "results.jsonl").read_text(encoding="utf-8")
    assert "NaN" not in written and "blue.png" not in written


def test_the_summary_shows_each_parts_weight(library: Settings, tmp_path: Path) -> None:
    folder = library.source_directory
    config = write_config(tmp_path / "config.json", library)
    done = run_cli("search", "--env", str(config), "--like", str(folder / "teal.png"),
                   "--and", f"0.5:{folder / 'yellow.png'}", "--not", f"2:{folder / 'blue.png'}")
    assert done.returncode == 0, done.stderr
    assert ("for 1 × like teal.png + 0.5 × like yellow.png - 2 × like blue.png."
            in done.stdout.splitlines()[0])


@pytest.mark.parametrize(
    "part",
    ["holiday.jpg", "~/Pictures/no-such-photo", "./beach", "photos/2023/IMG_0001",
     "/no/such/folder/x", "2:IMG_0001.CR2"],
)
@pytest.mark.parametrize("flag", ["--and", "--not"])
def test_a_part_that_looks_like_a_file_but_is_none_is_refused(
    unreachable: Path, part: str, flag: str
) -> None:
    line = refused_early(unreachable, "--text", "red", flag, part)
    assert f"{flag} {part.removeprefix('2:')}: no such file" in line


def test_words_with_a_slash_and_spaces_are_words() -> None:
    for words in ("black/white photo", "AC/DC on stage", "16:9 screens"):
        assert parse_part(f"1:{words}", -1, "--not") == QueryPart("text", words, 1.0, -1)


def test_under_a_folder_that_does_not_exist_is_refused_before_anything_is_written(
    unreachable: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder"
    line = refused_early(unreachable, "--text", "red", "--under", str(missing))
    assert line.endswith(f"--under {missing}: no such folder (check the path, or mount the "
                         "drive first)")
    done = run_cli("duplicates", "--env", str(unreachable), "--under", str(missing))
    assert done.returncode == 2 and f"--under {missing}: no such folder" in done.stderr
