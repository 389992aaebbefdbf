"""What the Ray tests share: a folder to index, an index run by the executor that the
settings ask for, and the check that a run on Ray stored what an in-process run stores."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
from conftest import assert_one_row_per_file, many_photos, stored_rows

from image_search.config import Settings
from image_search.executor_choice import executor_for
from image_search.images import processed_path_for
from image_search.ingest import IndexReport, Progress, run_index
from image_search.models import Embedder


def folder_of_photos(settings: Settings, count: int) -> list[Path]:
    """`count` photos, one byte-identical copy, and one file that is not an image."""
    folder = settings.source_directory
    photos = many_photos(folder, count)
    copy = folder / "sub" / "copy.jpg"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photos[0], copy)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    return [*photos, copy]


def index(settings: Settings, progress: Progress | None = None) -> IndexReport:
    embedder = Embedder.from_settings(settings)
    return run_index(settings, embedder, progress=progress, executor=executor_for(settings))


def processed_digests(rows: list[dict]) -> dict[str, str]:
    return {
        row["file_path"]: hashlib.sha256(Path(row["processed_path"]).read_bytes()).hexdigest()
        for row in rows
    }


def assert_same_as_in_process(settings: Settings, ray_address: str) -> None:
    """The folder indexed in process, then on Ray into another table: same everything."""
    files = folder_of_photos(settings, 10)
    expected_report = index(settings)
    expected = stored_rows(settings)
    expected_jpegs = processed_digests(expected)
    on_ray = dataclasses.replace(
        settings, table_name=f"{settings.table_name}_ray", ray_address=ray_address
    )
    seen: list[tuple[int, int]] = []
    report = index(on_ray, Progress(callback=lambda done, total: seen.append((done, total))))
    assert report.to_json() == expected_report.to_json()
    work = len(files) + 1
    assert seen[0] == (0, work) and seen[-1] == (work, work)  # the page's bar, as in process
    assert report.added == len(files) and len(report.failed) == 1
    rows = stored_rows(on_ray)
    assert_one_row_per_file(on_ray, files)
    assert [r["file_path"] for r in rows] == [r["file_path"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        for column in ("file_name", "path_hash", "content_hash"):
            assert got[column] == want[column]
        # Each table keeps its processed JPEGs in a folder of its own, under the same names.
        assert got["processed_path"] == str(processed_path_for(on_ray, got["file_path"]))
        assert Path(got["processed_path"]).name == Path(want["processed_path"]).name
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5)
    assert processed_digests(rows) == expected_jpegs  # the JPEGs rewritten, byte for byte
