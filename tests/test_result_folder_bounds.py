"""The result folder's share of the disk bound (issue 24 item 7): its copy of the original
passes the checks serving it does (web_files), a free-space floor below which a search
answers but writes nothing (and says so), and keep-results, which deletes only the oldest
folders image-search wrote. Searches by stored vectors (`--like` an indexed file): no model."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, stored_rows, write_config
from fake_model import FakeColourModel, fake_embedder, fake_model_settings, write_palette
from gradio_client import Client
from test_query_parts import LIBRARY

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.result_folder import QUERY_IMAGE_FILE, RESULTS_FILE

pytestmark = pytest.mark.fast
_tables = itertools.count(1)
SECRET = b'{"postgres-password": "not-for-a-result-folder"}\n'


@pytest.fixture
def library(tmp_path: Path, data_directory: Path) -> Settings:
    settings = fake_model_settings(
        tmp_path, data_directory, f"folders_{next(_tables)}", top_k=3
    )
    write_palette(settings.source_directory, LIBRARY)
    run_index(settings, fake_embedder(FakeColourModel()))
    return settings


def search_like(config: Path, photo: Path, *extra: str) -> dict:
    done = run_cli("search", "--env", str(config), "--json", "--like", str(photo), *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) | {"stderr": done.stderr}


def everything_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_photo_replaced_by_a_link_to_a_secret_is_not_copied_into_the_result_folder(
    library: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "config-of-someone.json"
    secret.write_bytes(SECRET)
    red = library.source_directory / "red.png"
    config = write_config(tmp_path / "config.json", library)
    red.unlink()
    red.symlink_to(secret)  # after indexing: the row still says red.png

    answer = search_like(config, red)  # searched by its stored vector: it finds itself first

    assert answer["results"][0]["file_path"] == str(red)
    folder = Path(answer["output_dir"])
    assert SECRET not in everything_under(folder)
    assert not (folder / "red.png").exists() and (folder / "red.processed.jpg").is_file()
    assert (f"original file not copied ({red}): it lies outside source-directory, or a link "
            "leads there; copied its processed JPEG instead") in answer["stderr"]


def test_a_processed_jpeg_replaced_by_a_link_is_not_copied_either(
    library: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(SECRET)
    red = library.source_directory / "red.png"
    processed = {Path(r["file_path"]).name: Path(r["processed_path"]) for r in stored_rows(library)}
    processed["red.png"].unlink()
    processed["red.png"].symlink_to(secret)
    config = write_config(tmp_path / "config.json", library)

    answer = search_like(config, red)  # query.jpg: the stored processed JPEG of red.png
    folder = Path(answer["output_dir"])
    assert SECRET not in everything_under(folder)
    assert not (folder / QUERY_IMAGE_FILE).exists() and (folder / "red.png").is_file()
    assert "no query.jpg written" in answer["stderr"]

    red.unlink()  # now the best match's processed JPEG would stand in for it
    answer = search_like(config, red)
    assert SECRET not in everything_under(Path(answer["output_dir"]))
    assert (f"original file is gone ({red}), and its processed JPEG cannot be copied either; "
            "nothing copied") in answer["stderr"]


def test_a_changed_original_is_not_copied_as_if_it_were_the_match(
    library: Settings, tmp_path: Path
) -> None:
    red, blue = (library.source_directory / n for n in ("red.png", "blue.png"))
    red.write_bytes(blue.read_bytes())  # another picture under the indexed name
    config = write_config(tmp_path / "config.json", library)
    answer = search_like(config, red)
    folder = Path(answer["output_dir"])
    assert not (folder / "red.png").exists() and (folder / "red.processed.jpg").is_file()
    assert "it has changed since it was indexed" in answer["stderr"]
    touched = library.source_directory / "orange.png"
    os.utime(touched, ns=(0, 10**18))  # same bytes, another mtime: still the indexed file
    answer = search_like(config, touched)
    assert (Path(answer["output_dir"]) / "orange.png").read_bytes() == touched.read_bytes()


def test_below_the_free_space_floor_a_search_answers_but_writes_nothing(
    library: Settings, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", library, **{"min-free-mb": 10**12})
    red = library.source_directory / "red.png"

    answer = search_like(config, red)
    printed = run_cli("search", "--env", str(config), "--like", str(red))

    assert answer["output_dir"] is None and answer["results"][0]["file_path"] == str(red)
    assert "no result folder written: only " in answer["stderr"]
    assert "min-free-mb asks to leave 1000000000000 MB" in answer["stderr"]
    assert printed.returncode == 0 and "Results in" not in printed.stdout
    assert "warning: no result folder written" in printed.stderr
    assert not library.output_directory.exists()
    below_zero = run_cli("status", "--env", str(config), "--min-free-mb", "-1")
    assert below_zero.returncode == 2 and "'min-free-mb' must be a positive" in below_zero.stderr


def test_the_page_says_when_no_result_folder_was_written(
    library: Settings, tmp_path: Path
) -> None:
    import dataclasses

    from conftest import running_page

    short = dataclasses.replace(library, min_free_mb=10**12)
    with running_page(short, fake_embedder(FakeColourModel())) as url:
        client = Client(url, verbose=False)
        *_, note, results = client.predict(
            str(library.source_directory / "red.png"), 3, api_name="/similar"
        )
    assert results["output_dir"] is None and len(results["results"]) == 3
    assert "⚠️ no result folder written: only" in note and "Result folder" not in note


def test_keep_results_deletes_only_the_oldest_folders_image_search_wrote(
    library: Settings, tmp_path: Path
) -> None:
    output = library.output_directory
    output.mkdir()
    lookalike = output / "20000101-000000"  # named as ours, but not ours: no results.jsonl
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    (output / "holiday-picks").mkdir()
    elsewhere = tmp_path / "elsewhere" / "20000101-000001"
    elsewhere.mkdir(parents=True)
    (elsewhere / RESULTS_FILE).write_text("{}\n")
    (output / "20000101-000001").symlink_to(elsewhere, target_is_directory=True)
    config = write_config(tmp_path / "config.json", library, **{"keep-results": 2})
    photos = [library.source_directory / f"{name}.png" for name in ("red", "green", "blue")]

    written = [Path(search_like(config, photo)["output_dir"]) for photo in photos]

    ours = sorted(p for p in output.iterdir() if (p / RESULTS_FILE).is_file()
                  and not p.is_symlink())
    assert ours == written[1:]
    assert not written[0].exists()
    assert lookalike.is_dir() and (output / "holiday-picks").is_dir()
    assert (output / "20000101-000001").is_symlink() and (elsewhere / RESULTS_FILE).is_file()
    assert all((folder / QUERY_IMAGE_FILE).is_file() for folder in ours)
    kept_all = write_config(tmp_path / "all.json", library)  # unset: the seed's keep-all
    for photo in photos:
        search_like(kept_all, photo)
    assert len([p for p in output.iterdir() if (p / RESULTS_FILE).is_file()]) == 6
