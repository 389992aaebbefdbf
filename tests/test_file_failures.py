"""A file's failure stays with the file (issue 24, item 2): whatever a decoder raises for one
file is that file's skip, counted and remembered, never the run's end; FIFOs, devices,
sockets and links to them are skipped without being read; reads have a size cap
(max-file-mb). As a user meets it: `image-search index` on a folder."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import threading
from pathlib import Path

import pytest
from conftest import run_cli, start_python, stored_rows, write_config
from imagegen import write_photo
from PIL import Image, ImageFile

from image_search.config import Settings
from image_search.duplicates import pixel_count
from image_search.errors import ImageSearchError
from image_search.images import ResizeSpec, capture_time, decoder_versions, file_capture_time
from image_search.pipeline import WorkItem, prepare_item
from image_search.scan import stat_file

MB = 2**20
NOT_REGULAR = "not a regular file"


def jxl_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="JXL", effort=1)
    return out.getvalue()


class DecoderBug(Exception):
    """Nothing Pillow's own decoders raise: what a buggy plugin might."""


class ExplodingBmp(ImageFile.ImageFile):
    """A Pillow plugin whose decoding raises an exception of its own."""

    format = "BMP"
    format_description = "a BMP that cannot be decoded"

    def _open(self) -> None:
        self._size = (8, 8)
        self._mode = "RGB"

    def load(self):  # type: ignore[override]
        raise DecoderBug("the decoder lost its place")


def explodes(prefix: bytes) -> bool:
    return prefix.startswith(b"BMboom")


def index_json(config: Path, *extra: str) -> dict:
    done = run_cli("index", "--env", str(config), "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def errors_by_name(report: dict) -> dict[str, str]:
    return {Path(failure["path"]).name: failure["error"] for failure in report["failed"]}


def test_whatever_a_decoder_raises_is_that_files_skip_and_is_remembered(
    settings: Settings, tmp_path: Path, monkeypatch
) -> None:
    folder = settings.source_directory
    good = [write_photo(folder / name, seed=i) for i, name in enumerate(["a.jpg", "b.png"])]
    whole = jxl_bytes()
    (folder / "cut.jxl").write_bytes(whole[: len(whole) // 2])  # a JPEG XL cut short
    (folder / "junk.jxl").write_bytes(b"\xff\x0a" + bytes(64))  # a 1x1 header, then nothing
    (folder / "odd.bmp").write_bytes(b"BMboom" + bytes(64))
    monkeypatch.setitem(Image.OPEN, "BMP", (ExplodingBmp, explodes))
    config = write_config(tmp_path / "config.json", settings)

    report = index_json(config)

    assert report["added"] == len(good)
    errors = errors_by_name(report)
    assert sorted(errors) == ["cut.jxl", "junk.jxl", "odd.bmp"]
    assert all(error.startswith("cannot decode image") for error in errors.values()), errors
    assert "DecoderBug" in errors["odd.bmp"]
    assert sorted(r["file_path"] for r in stored_rows(settings)) == sorted(map(str, good))
    again = run_cli("index", "--env", str(config))
    assert again.returncode == 0, again.stderr
    assert "3 unchanged since they failed before" in again.stdout  # remembered, not re-read


@pytest.mark.slow
def test_fifos_devices_and_links_to_them_are_skipped_unread(
    make_settings, process_backend: dict[str, str], tmp_path: Path
) -> None:
    """In a process of its own, as cron runs it (a FIFO would hang it for ever, a link to
    /dev/zero would be read until memory runs out): each is one skipped line."""
    settings = make_settings(**process_backend)
    folder = settings.source_directory
    folder.mkdir(parents=True)
    good = write_photo(folder / "good.jpg", seed=1)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "to-pipe.png").symlink_to(folder / "pipe.jpg")
    config = write_config(tmp_path / "config.json", settings)

    def limited() -> None:  # a run that reads /dev/zero dies here, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    process = start_python(
        "-m", "image_search", "index", "--env", str(config), "--json", preexec_fn=limited
    )
    out, err = process.communicate(timeout=300)

    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["added"] == 1
    errors = errors_by_name(report)
    assert sorted(errors) == ["pipe.jpg", "to-pipe.png", "zero.jpg"]
    assert "(a FIFO)" in errors["pipe.jpg"] and "(a FIFO)" in errors["to-pipe.png"]
    assert "(a character device)" in errors["zero.jpg"]
    assert [r["file_path"] for r in stored_rows(settings)] == [str(good)]


def test_a_file_over_max_file_mb_is_skipped_with_the_setting_that_lets_it_in(
    settings: Settings, tmp_path: Path
) -> None:
    folder = settings.source_directory
    write_photo(folder / "small.jpg", seed=1)
    big = folder / "scan.png"
    Image.frombytes("RGB", (1000, 800), os.urandom(1000 * 800 * 3)).save(big)  # 2.3 MB
    config = write_config(tmp_path / "config.json", settings)

    report = index_json(config, "--max-file-mb", "1")

    assert report["added"] == 1
    error = errors_by_name(report)["scan.png"]
    size_mb = -(-big.stat().st_size // MB)
    assert error == (
        f"file too large: {size_mb} MB is over max-file-mb (1); to accept it, raise that "
        f"setting (--max-file-mb {size_mb})"
    )
    raised = run_cli(
        "index", "--env", str(config), "--json", "--max-file-mb", str(size_mb),
        "--table-name", settings.table_name + "_raised",
    )
    assert json.loads(raised.stdout)["failed"] == []


def hangs(action, timeout: float = 60) -> bool:
    """Whether `action` is still running after `timeout` (a read of a FIFO never ends)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread.is_alive()


@pytest.mark.fast
def test_capture_dates_and_pixel_counts_never_open_a_fifo(tmp_path: Path) -> None:
    """The date back-fill of old tables and duplicates' pixel counts read headers only,
    and only of regular files."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    results: list[object] = []
    assert not hangs(lambda: results.append(file_capture_time(str(fifo), 7 * 10**9)))
    assert not hangs(lambda: results.append(capture_time(fifo, 7 * 10**9)))
    assert not hangs(lambda: results.append(pixel_count(str(fifo))))
    mtime = file_capture_time(str(write_photo(tmp_path / "p.jpg", seed=1)), 7 * 10**9)
    assert results[:2] == [type(mtime).fromtimestamp(7)] * 2 and results[2] == 0


@pytest.mark.fast
def test_a_full_disk_stops_the_run_other_write_errors_are_the_files(
    settings: Settings, monkeypatch
) -> None:
    """Only an error of the run itself ends it: no room for processed JPEGs is one."""
    from image_search import pipeline

    photo = write_photo(settings.source_directory / "a.jpg", seed=1)
    item = WorkItem(stat_file(str(photo)), None)
    spec = ResizeSpec.of(settings)

    def full(image, destination):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "save_jpeg", full)
    with pytest.raises(ImageSearchError, match="No space left on device.*data-directory"):
        prepare_item(settings, spec, item)

    def denied(image, destination):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pipeline, "save_jpeg", denied)
    failure = prepare_item(settings, spec, item)
    assert isinstance(failure, pipeline.Failure) and not failure.of_file


@pytest.mark.fast
def test_decoder_versions_name_every_decoder() -> None:
    versions = decoder_versions()
    for name in ("pillow", "pillow-heif", "pillow-jxl-plugin", "rawpy", "libraw", "libheif"):
        assert versions[name] and versions[name] != "absent", name


@pytest.mark.cluster
def test_on_ray_a_files_failure_stays_with_the_file(
    make_settings, process_backend: dict[str, str]
) -> None:
    """The Ray executor prepares with the same prepare_item: a broken JPEG XL and a FIFO
    are skipped there too."""
    from ray_runs import index

    settings = make_settings(ray_address="local", **process_backend)
    folder = settings.source_directory
    folder.mkdir(parents=True)
    write_photo(folder / "good.jpg", seed=1)
    whole = jxl_bytes()
    (folder / "cut.jxl").write_bytes(whole[: len(whole) // 2])
    os.mkfifo(folder / "pipe.jpg")

    report = index(settings)

    assert report.added == 1
    assert sorted(Path(f.path).name for f in report.failed) == ["cut.jxl", "pipe.jpg"]
    assert NOT_REGULAR in {f.path: f.error for f in report.failed}[str(folder / "pipe.jpg")]
