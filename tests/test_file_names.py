"""File names that are not valid UTF-8 (old archives, Windows zips, Latin-1 cameras): indexed
like any other, shown with each odd byte as \\xNN, and the exact bytes kept for the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import run_cli, stored_rows, write_config
from imagegen import write_photo

from image_search.config import Settings
from image_search.scan import display_path
from image_search.store import open_store

LATIN1_NAME = b"caf\xe9.jpg"  # "café.jpg" written by a Latin-1 system
BROKEN_NAME = b"br\xff.jpg"


def test_a_name_that_is_not_utf8_is_indexed_searched_and_copied(
    settings: Settings, tmp_path: Path
) -> None:
    folder = settings.source_directory
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/" + LATIN1_NAME))
    write_photo(odd, seed=3)
    write_photo(folder / "plain.png", seed=4)
    broken = Path(os.fsdecode(os.fsencode(folder) + b"/" + BROKEN_NAME))
    broken.write_bytes(b"not a jpeg")
    config = write_config(tmp_path / "config.json", settings)

    done = run_cli("index", "--env", str(config), "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 2
    assert [f["path"] for f in report["failed"]] == [f"{folder}/br\\xff.jpg"]
    shown = f"{folder}/caf\\xe9.jpg"
    assert display_path(str(odd)) == shown
    rows = {r["file_path"]: r for r in stored_rows(settings)}
    assert rows[shown]["file_name"] == "caf\\xe9.jpg"
    with open_store(settings) as store, store.database.connection() as conn:
        raw = conn.execute(
            f'SELECT file_path_raw FROM "{settings.table_name}" WHERE file_path = %s', [shown]
        ).fetchone()[0]
    assert bytes(raw) == os.fsencode(odd)

    again = run_cli("index", "--env", str(config), "--json")
    assert json.loads(again.stdout)["unchanged"] == 2  # the stored path matches the file

    found = run_cli("search", "--env", str(config), "--image", str(odd), "--json")
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert result["results"][0]["file_path"] == shown
    assert result["results"][0]["file_name"] == "caf\\xe9.jpg"
    output = Path(result["output_dir"])
    copied = Path(os.fsdecode(os.fsencode(output) + b"/" + LATIN1_NAME))
    assert copied.read_bytes() == odd.read_bytes()  # the best match under its exact name
    lines = (output / "results.jsonl").read_bytes().decode("utf-8").splitlines()
    assert json.loads(lines[0])["file_path"] == shown

    printed = run_cli("search", "--env", str(config), "--image", str(odd))
    assert printed.returncode == 0, printed.stderr
    assert shown in printed.stdout
