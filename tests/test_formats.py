"""Every photo a camera or phone writes: camera RAW (real DNGs made here from Bayer data),
AVIF, JPEG XL and 200-megapixel JPEGs, decoded upright and in colour, indexed by default and
found by themselves."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, stored_rows, write_config
from imagegen import BIG_PHOTO_SIZE, BIG_PHOTO_TAKEN, photo, write_big_jpeg, write_dng, write_photo
from PIL import Image

from image_search.config import Settings
from image_search.errors import ConfigError, ImageError
from image_search.images import (
    ResizeSpec,
    file_capture_time,
    prepare_bytes,
    resize,
    target_size,
)
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.scan import RAW_EXTENSIONS, is_image_name, scan_images
from image_search.search import Searcher
from image_search.store import open_store

RED, BLUE = (230, 20, 20), (20, 30, 230)
# Peak memory allowed for preparing one 200-megapixel JPEG (issue 20).
BIG_PHOTO_RSS_MB = 600


def spec(width: int = 96, height: int = 64, max_pixels: int = 10**8) -> ResizeSpec:
    return ResizeSpec(width, height, "fit", max_pixels)


def red_over_blue(width: int = 80, height: int = 120) -> Image.Image:
    """An upright portrait photo: red top half, blue bottom half."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width, height // 2))
    return image


def is_red_over_blue(image: Image.Image) -> bool:
    """Portrait, red on top, blue below: upright and in colour."""
    top = np.asarray(image)[: image.height // 4].reshape(-1, 3).mean(axis=0)
    bottom = np.asarray(image)[-image.height // 4 :].reshape(-1, 3).mean(axis=0)
    red_top = top[0] > 150 and top[2] < 90
    blue_bottom = bottom[2] > 150 and bottom[0] < 90
    return image.height > image.width and red_top and blue_bottom


# -- camera RAW ------------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("orientation", [1, 3, 6])
@pytest.mark.parametrize("preview_scale", [None, 0.5])
def test_a_raw_file_is_decoded_upright_and_in_colour(
    tmp_path: Path, orientation: int, preview_scale: float | None
) -> None:
    dng = write_dng(tmp_path / "shot.dng", red_over_blue(), orientation, preview_scale)
    image = prepare_bytes(dng.read_bytes(), spec(32, 32), raw=True)
    assert is_red_over_blue(image), (image.size, np.asarray(image)[0, 0], np.asarray(image)[-1, 0])


@pytest.mark.fast
def test_the_embedded_preview_is_used_when_it_is_as_large_as_the_target(tmp_path: Path) -> None:
    upright = photo(5, width=160, height=120)
    dng = write_dng(tmp_path / "shot.dng", upright, preview_scale=0.25)  # a 40x30 preview
    data = dng.read_bytes()
    small = prepare_bytes(data, spec(32, 32), raw=True)  # 32x24 wanted: the preview will do
    preview = upright.resize((40, 30), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(small), np.asarray(resize(preview, spec(32, 32))))
    large = prepare_bytes(data, spec(96, 64), raw=True)  # 85x64 wanted: demosaic at half size
    assert large.size == (80, 60)
    demosaiced = np.asarray(large, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    original = np.asarray(upright.resize(large.size), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(demosaiced - original).max() < 25  # the sensor data, in its own colours


@pytest.mark.fast
def test_a_raw_files_capture_date_comes_from_its_metadata(tmp_path: Path) -> None:
    dng = write_dng(tmp_path / "shot.DNG", photo(1), taken="2019:07:14 10:20:30")
    expected = datetime(2019, 7, 14, 10, 20, 30)
    assert file_capture_time(str(dng), 0) == expected
    assert file_capture_time(str(dng), 0, dng.read_bytes()) == expected
    undated = write_dng(tmp_path / "undated.dng", photo(1), taken="")
    assert file_capture_time(str(undated), 5 * 10**9) == datetime.fromtimestamp(5)


@pytest.mark.fast
@pytest.mark.parametrize(
    "content", [b"this is not a photo", b"II*\x00" + bytes(4000), "truncated"], ids=repr
)
def test_a_damaged_raw_file_is_an_image_error(tmp_path: Path, content: bytes | str) -> None:
    if content == "truncated":
        whole = write_dng(tmp_path / "whole.dng", photo(2)).read_bytes()
        content = whole[: len(whole) // 3]
    with pytest.raises(ImageError, match="cannot decode RAW file"):
        prepare_bytes(content, spec(), raw=True)


@pytest.mark.fast
def test_a_raw_file_over_max_image_pixels_is_refused(tmp_path: Path) -> None:
    dng = write_dng(tmp_path / "shot.dng", photo(3, width=160, height=120))
    with pytest.raises(ImageError, match="max-image-pixels"):
        prepare_bytes(dng.read_bytes(), spec(max_pixels=160 * 120 - 1), raw=True)


@pytest.mark.fast
def test_every_raw_container_and_modern_format_is_scanned() -> None:
    for extension in [*RAW_EXTENSIONS, "avif", "jxl"]:
        assert is_image_name(f"IMG_0001.{extension}")
        assert is_image_name(f"IMG_0001.{extension.upper()}")


def write_pairs(folder: Path) -> None:
    """IMG_1 shot as RAW+JPEG, IMG_2 as RAW only, IMG_3 as RAW+HEIC, and a JPEG of the same
    stem in another folder (which pairs with nothing)."""
    for name in ("IMG_1.CR2", "IMG_2.dng", "IMG_3.dng", "other/IMG_2.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    write_photo(folder / "IMG_1.JPG", seed=1)
    photo(3).save(folder / "IMG_3.heic", format="HEIF")


@pytest.mark.fast
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip-raw", ["IMG_1.JPG", "IMG_2.dng", "IMG_3.heic", "other/IMG_2.jpg"]),
        ("skip-jpeg", ["IMG_1.CR2", "IMG_2.dng", "IMG_3.dng", "other/IMG_2.jpg"]),
        ("both", ["IMG_1.CR2", "IMG_1.JPG", "IMG_2.dng", "IMG_3.dng", "IMG_3.heic",
                  "other/IMG_2.jpg"]),
    ],
)
def test_raw_with_jpeg_decides_which_of_a_pair_is_indexed(
    tmp_path: Path, policy: str, expected: list[str]
) -> None:
    write_pairs(tmp_path)
    found = scan_images(tmp_path, (), policy)
    assert sorted(Path(f.path).relative_to(tmp_path).as_posix() for f in found) == expected


@pytest.mark.fast
def test_raw_with_jpeg_is_a_checked_key(tmp_path: Path) -> None:
    from image_search.config import load_settings

    config = tmp_path / "config.json"
    config.write_text("{}")
    assert load_settings(config, environ={}).raw_with_jpeg == "skip-raw"
    assert load_settings(config, {"raw-with-jpeg": "both"}, environ={}).raw_with_jpeg == "both"
    with pytest.raises(ConfigError, match="raw-with-jpeg.*skip-raw, skip-jpeg, both"):
        load_settings(config, {"raw-with-jpeg": "raw"}, environ={})


# -- AVIF and JPEG XL ---------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("form", ["AVIF", "JXL"])
def test_avif_and_jpeg_xl_are_decoded_upright_and_in_colour(form: str) -> None:
    sideways = red_over_blue().transpose(Image.Transpose.ROTATE_90)  # stored as a phone held
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, format=form, exif=exif.tobytes(), quality=90)
    assert is_red_over_blue(prepare_bytes(buffer.getvalue(), spec(200, 200)))


# -- big phone photos -------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_jpeg(tmp_path_factory.mktemp("big") / "phone-200mp.jpg")


# The process's own peak RSS (VmHWM): ru_maxrss would keep pytest's peak across fork and exec.
PEAK_RSS_SCRIPT = """
import sys
from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
image = prepare_file(sys.argv[1], ResizeSpec.of(Settings()))
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(image.width, image.height, int(status.split()[0]) // 1024)
"""


@pytest.mark.fast
def test_a_200_megapixel_jpeg_is_prepared_by_default_within_600_mb(big_jpeg: Path) -> None:
    """In a fresh process, with the default settings: the peak RSS of the whole process."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(big_jpeg)],
        capture_output=True,
        text=True,
        check=True,
    )
    width, height, peak_mb = map(int, done.stdout.split())
    assert (width, height) == target_size(*BIG_PHOTO_SIZE, ResizeSpec.of(Settings()))
    assert peak_mb <= BIG_PHOTO_RSS_MB


@pytest.mark.fast
def test_a_200_megapixel_jpeg_keeps_its_capture_date(big_jpeg: Path) -> None:
    """Pillow's own guard refuses to open it; the capture date is read all the same."""
    taken = datetime.strptime(BIG_PHOTO_TAKEN, "%Y:%m:%d %H:%M:%S")
    assert file_capture_time(str(big_jpeg), 0) == taken
    assert file_capture_time(str(big_jpeg), 0, big_jpeg.read_bytes()) == taken


@pytest.mark.fast
def test_a_decompression_bomb_is_still_refused_by_default(big_jpeg: Path) -> None:
    """The default limit was raised above 200 megapixels, not removed."""
    limit = Settings().max_image_pixels
    assert BIG_PHOTO_SIZE[0] * BIG_PHOTO_SIZE[1] <= limit
    bomb = io.BytesIO()
    side = int(limit**0.5) + 1
    Image.new("1", (side, side)).save(bomb, format="PNG", optimize=True)
    with pytest.raises(ImageError, match="max-image-pixels"):
        prepare_bytes(bomb.getvalue(), ResizeSpec.of(Settings()))


# -- all of it in one folder, with the real model code --------------------------------


def every_format(folder: Path, big_jpeg: Path) -> tuple[list[Path], Path]:
    """One valid file of each new kind (distinct photos), and a damaged RAW file."""
    valid = [
        write_dng(folder / "camera" / "DSC_0001.dng", photo(11, 320, 240), preview_scale=0.5),
        write_dng(folder / "camera" / "DSC_0002.DNG", photo(12, 240, 320), orientation=6),
        folder / "phone" / "PXL_0001.avif",
        folder / "phone" / "PXL_0002.jxl",
        folder / "phone" / big_jpeg.name,
    ]
    valid[2].parent.mkdir(parents=True)
    photo(13).save(valid[2], format="AVIF")
    photo(14).save(valid[3], format="JXL")
    valid[4].symlink_to(big_jpeg)
    damaged = folder / "camera" / "DSC_0003.nef"
    damaged.write_bytes(b"II*\x00" + bytes(4000))
    return valid, damaged


def test_a_folder_of_every_format_is_indexed_and_each_file_finds_itself(
    settings: Settings, shared_embedder: Embedder, big_jpeg: Path
) -> None:
    valid, damaged = every_format(settings.source_directory, big_jpeg)
    report = run_index(settings, shared_embedder)
    assert [(f.path, f.error.startswith("cannot decode RAW file")) for f in report.failed] == [
        (str(damaged), True)
    ]
    assert report.added == len(valid)
    rows = {row["file_path"]: row for row in stored_rows(settings)}
    assert sorted(rows) == sorted(map(str, valid))
    upright = Image.open(rows[str(valid[1])]["processed_path"])
    assert upright.height > upright.width  # the sideways camera's shot, stored upright
    with open_store(settings) as store:
        searcher = Searcher(settings, store, shared_embedder)
        for path in valid:
            best = searcher.by_image(path, top_k=1).results[0]
            assert (best.file_path, best.score) == (str(path), pytest.approx(1.0, abs=1e-3))


def test_index_keeps_one_row_per_raw_plus_jpeg_shot_by_default(
    settings: Settings, tmp_path: Path
) -> None:
    folder = settings.source_directory
    write_dng(folder / "IMG_0001.CR2", photo(21))  # LibRaw reads by content, not by name
    write_photo(folder / "IMG_0001.JPG", seed=21)
    write_dng(folder / "IMG_0002.dng", photo(22))
    config = write_config(tmp_path / "config.json", settings)
    for extra, expected in (
        ((), ["IMG_0001.JPG", "IMG_0002.dng"]),
        (("--raw-with-jpeg", "both"), ["IMG_0001.CR2", "IMG_0001.JPG", "IMG_0002.dng"]),
    ):
        done = run_cli("index", "--env", str(config), "--json", *extra)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["failed"] == []
        names = sorted(Path(row["file_path"]).name for row in stored_rows(settings))
        assert names == expected


def test_a_raw_file_is_a_query_too(
    settings: Settings, shared_embedder: Embedder, tmp_path: Path
) -> None:
    raw = write_dng(tmp_path / "query.dng", photo(31, 320, 240), preview_scale=0.5)
    write_photo(settings.source_directory / "a.png", seed=32)
    stored_raw = write_dng(settings.source_directory / "b.dng", photo(31, 320, 240), 1, 0.5)
    run_index(settings, shared_embedder)
    with open_store(settings) as store:
        best = Searcher(settings, store, shared_embedder).by_image(raw, top_k=1).results[0]
    assert (best.file_path, best.score) == (str(stored_raw), pytest.approx(1.0, abs=1e-4))


def test_a_raw_file_is_a_query_on_the_page_too(
    settings: Settings, shared_embedder: Embedder, tmp_path: Path
) -> None:
    from conftest import running_page
    from gradio_client import Client, handle_file

    query = write_dng(tmp_path / "upload" / "IMG_0007.DNG", photo(41, 320, 240), 6, 0.5)
    stored = write_dng(settings.source_directory / "IMG_0007.DNG", photo(41, 320, 240), 6, 0.5)
    write_photo(settings.source_directory / "other.jpg", seed=42)
    run_index(settings, shared_embedder)
    with running_page(settings, shared_embedder) as url:
        *_, results = Client(url, verbose=False).predict(
            handle_file(str(query)), "", 2, api_name="/search"
        )
    best = results["results"][0]
    assert (best["file_path"], best["score"]) == (str(stored), pytest.approx(1.0, abs=1e-4))


@pytest.mark.fast
def test_help_config_names_the_format_keys() -> None:
    from image_search.cli_parser import config_help

    text = config_help()
    assert "raw-with-jpeg" in text and "skip-raw" in text
    assert f"{Settings().max_image_pixels}" in text and "200-megapixel" in text


@pytest.mark.fast
def test_big_jpegs_are_left_to_pillows_reduced_size_decoding(tmp_path: Path) -> None:
    """The GPU path's decoder works at full size: a 108-megapixel photo goes to Pillow."""
    from image_search.tensor_images import TENSOR_MAX_PIXELS, tensor_header

    limit = Settings().max_image_pixels
    big = write_big_jpeg(tmp_path / "phone-108mp.jpg", (12000, 9000))
    assert TENSOR_MAX_PIXELS < 12000 * 9000
    assert tensor_header(big.read_bytes(), limit) is None
    camera = write_photo(tmp_path / "camera-12mp.jpg", seed=3, width=4000, height=3000)
    assert tensor_header(camera.read_bytes(), limit) is not None


@pytest.mark.fast
def test_raw_and_200_megapixel_files_count_their_pixels_for_the_one_to_keep(
    tmp_path: Path, big_jpeg: Path
) -> None:
    """duplicates keeps the file with most pixels: a RAW file's come from LibRaw, a 200 MP
    photo's from its header past Pillow's own limit (both counted 0 before)."""
    from image_search.duplicates import pixel_count

    dng = write_dng(tmp_path / "shot.dng", photo(4, width=160, height=120), orientation=6)
    assert pixel_count(str(dng)) == 160 * 120
    assert pixel_count(str(big_jpeg)) == BIG_PHOTO_SIZE[0] * BIG_PHOTO_SIZE[1]
