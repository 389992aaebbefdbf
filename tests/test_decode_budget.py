"""A budget for every decode (issue 24, item 1): max-image-pixels weighs the memory a format
takes to decode, decoding stays within what was weighed (the peak of a fresh process), and
the index run's threads and the page's queries share one memory budget derived from the
machine (cgroup-aware) or set by memory-budget-mb."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, stored_rows, write_config
from fake_model import FakeColourModel, fake_embedder, fake_model_settings, solid_photo
from imagegen import photo, write_dng
from PIL import Image

from image_search.config import Settings, load_settings
from image_search.image_pixels import upright_rgb
from image_search.images import ResizeSpec
from image_search.ingest import run_index
from image_search.memory_budget import (
    MB,
    MemoryBudget,
    budget_bytes,
    cgroup_memory_limits,
    derived_budget_bytes,
    machine_memory,
)
from image_search.search import Searcher
from image_search.store import open_store


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Until `condition` holds (an observable state, polled); the timeout is a safety net."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the awaited state never came"
        time.sleep(0.01)


def reserving(budget: MemoryBudget, cost: int, admitted: list[int]) -> threading.Thread:
    """A thread that reserves `cost` and, once admitted, notes it and lets go."""

    def reserve() -> None:
        with budget.reserve(cost):
            admitted.append(cost)

    thread = threading.Thread(target=reserve, daemon=True)
    thread.start()
    return thread


# -- the budget -------------------------------------------------------------------------


@pytest.mark.fast
def test_a_reservation_waits_until_it_fits_and_none_jumps_the_queue() -> None:
    budget = MemoryBudget(100)
    admitted: list[int] = []
    with budget.reserve(60):
        large = reserving(budget, 50, admitted)  # 110 > 100: waits
        wait_until(lambda: budget.waiting == 1)
        small = reserving(budget, 10, admitted)  # would fit, but comes after the large one
        wait_until(lambda: budget.waiting == 2)
        assert (admitted, budget.used) == ([], 60)
    large.join(60)
    small.join(60)
    assert sorted(admitted) == [10, 50] and budget.used == 0


@pytest.mark.fast
def test_a_decode_larger_than_the_whole_budget_runs_alone() -> None:
    budget = MemoryBudget(100)
    admitted: list[int] = []
    with budget.reserve(500):  # nothing else held: admitted at once
        assert budget.used == 500
        other = reserving(budget, 1, admitted)
        wait_until(lambda: budget.waiting == 1)
        assert admitted == []  # nothing runs beside it
    other.join(60)
    assert admitted == [1] and budget.peak == 500


@pytest.mark.fast
def test_a_thread_that_holds_a_reservation_is_not_made_to_wait_for_itself() -> None:
    budget = MemoryBudget(100)
    with budget.reserve(90), budget.reserve(50):
        assert budget.used == 140
    assert budget.used == 0


@pytest.mark.fast
def test_the_budget_follows_the_cgroup_limits_of_this_process(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    scope = v2 / "user.slice" / "app.scope"
    scope.mkdir(parents=True)
    (v2 / "user.slice" / "memory.max").write_text("2147483648\n")  # the parent's limit holds
    (scope / "memory.max").write_text("max\n")
    membership = tmp_path / "cgroup-v2"
    membership.write_text("0::/user.slice/app.scope\n")
    assert cgroup_memory_limits(v2, membership) == [2147483648]

    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text("1073741824\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    membership.write_text("5:cpu:/other\n4:memory:/docker/abc\n")
    assert sorted(cgroup_memory_limits(v1, membership)) == [1073741824, 9223372036854771712]

    assert machine_memory() <= min([2**63, *cgroup_memory_limits()])
    assert derived_budget_bytes() == max(512 * MB, machine_memory() // 4)


@pytest.mark.fast
def test_memory_budget_mb_sets_the_budget_and_unset_derives_it(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    settings = load_settings(config, environ={})
    assert settings.memory_budget_mb is None
    assert ResizeSpec.of(settings).budget().capacity == derived_budget_bytes()
    set_ = load_settings(config, flags={"memory-budget-mb": "300"}, environ={})
    assert ResizeSpec.of(set_).budget().capacity == budget_bytes(300) == 300 * MB
    from image_search.cli_parser import config_help

    help_text = config_help()
    assert "memory-budget-mb" in help_text and "max-file-mb" in help_text


@pytest.mark.fast
def test_a_query_image_waits_for_the_budget_that_the_index_run_holds(
    tmp_path: Path, data_directory: Path
) -> None:
    """The page's search and the index run's threads share one budget: a query image is
    not decoded while decodes of the same process hold all of it."""
    settings = fake_model_settings(
        tmp_path, data_directory, "budget_shared", memory_budget_mb=64
    )
    solid_photo(settings.source_directory / "red.png", (255, 0, 0))
    embedder = fake_embedder(FakeColourModel())
    run_index(settings, embedder)
    query = solid_photo(tmp_path / "query.png", (250, 10, 10))
    budget = ResizeSpec.of(settings).budget()
    found: list[str] = []
    with open_store(settings) as store:
        searcher = Searcher(settings, store, embedder)

        def search() -> None:
            found.append(searcher.by_image(query, top_k=1).results[0].file_name)

        with budget.reserve(budget.capacity):  # an index run's decodes hold it all
            thread = threading.Thread(target=search, daemon=True)
            thread.start()
            wait_until(lambda: budget.waiting == 1)
            assert found == []
        thread.join(60)
    assert found == ["red.png"]


# -- max-image-pixels weighs memory -------------------------------------------------------


def test_max_image_pixels_counts_the_memory_a_format_takes_to_decode(
    settings: Settings, tmp_path: Path
) -> None:
    """An AVIF takes more memory to decode than an 8-bit RGB PNG of the same size: at twice
    its pixels, the PNG is indexed and the AVIF refused with the setting that lets it in."""
    picture = photo(7, 400, 300)
    png = settings.source_directory / "flat.png"
    avif = settings.source_directory / "phone.avif"
    picture.save(png)
    picture.save(avif, format="AVIF", quality=80)
    limit = 2 * picture.width * picture.height
    config = write_config(tmp_path / "config.json", settings)

    done = run_cli("index", "--env", str(config), "--json", "--max-image-pixels", str(limit))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 1
    [failure] = report["failed"]
    assert failure["path"] == str(avif)
    assert f"over max-image-pixels ({limit})" in failure["error"]
    needed = int(failure["error"].rsplit("--max-image-pixels ", 1)[1].rstrip(")"))
    assert needed > limit
    raised = run_cli(
        "index", "--env", str(config), "--json", "--max-image-pixels", str(needed),
        "--table-name", settings.table_name + "_raised",
    )
    assert json.loads(raised.stdout)["failed"] == []  # raising it as advised lets it in
    raised_table = dataclasses.replace(settings, table_name=settings.table_name + "_raised")
    assert len(stored_rows(raised_table)) == 2


@pytest.mark.fast
def test_an_upright_rgb_image_of_the_right_size_is_not_copied() -> None:
    image = photo(1, 96, 64)
    assert upright_rgb(image, 1, lambda w, h: (w, h)) is image
    turned = upright_rgb(image, 6, lambda w, h: (w, h))
    assert turned.size == (64, 96)
    np.testing.assert_array_equal(
        np.asarray(turned), np.asarray(image.transpose(Image.Transpose.ROTATE_270))
    )


@pytest.mark.fast
def test_16_bit_grey_is_scaled_to_8_bits_as_before() -> None:
    """16-bit data over 255 is scaled from 0..65535, 8-bit data in a 16-bit image from
    0..255, both floored, as the float64 conversion did."""
    from image_search.images import prepare_bytes

    values = np.array([[0, 257, 1000, 65535], [128, 30000, 40000, 65534]], dtype=np.uint16)
    for data in (values, np.array([[0, 10, 200, 255], [1, 2, 3, 254]], dtype=np.uint16)):
        out = io.BytesIO()
        Image.fromarray(data).save(out, format="PNG")
        top = 65535.0 if data.max() > 255 else 255.0
        expected = np.floor(data.astype(np.float64) * (255.0 / top)).astype(np.uint8)
        prepared = prepare_bytes(out.getvalue(), ResizeSpec(4, 2, "fit", 10**6))
        np.testing.assert_array_equal(np.asarray(prepared)[..., 0], expected)


# -- what a decode costs, measured ------------------------------------------------------

# The process's own peak (VmHWM) before and after preparing one file with the default
# limits, and the most the decode reserved from the budget. A small target keeps the fixed
# part of a reservation (the reduced copy) small beside the decoder's own.
PEAK_SCRIPT = """
import dataclasses, sys
from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file

def peak():
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    return int(status.split()[0]) * 1024

spec = dataclasses.replace(ResizeSpec.of(Settings()), width=64, height=48)
before = peak()
prepare_file(sys.argv[1], spec)
print(before, peak(), spec.budget().peak)
"""
SIDE = (4000, 3000)  # 12 megapixels: the decoders' own buffers outweigh fixed costs


def write_case(folder: Path, kind: str) -> Path:
    """One 12-megapixel file of `kind`, mostly flat (quick to encode)."""
    colour = Image.new("RGB", SIDE, (70, 120, 200))
    colour.paste((220, 40, 30), (500, 700, 2200, 2100))
    cases: dict[str, tuple[str, Callable[[Path], None]]] = {
        "png-16-bit-grey": ("png", lambda p: Image.fromarray(
            np.asarray(colour.convert("L"), dtype=np.uint16) * 257).save(p)),
        "png-rgba": ("png", lambda p: colour.convert("RGBA").save(p)),
        "avif": ("avif", lambda p: colour.save(p, speed=10, quality=50)),
        "jxl": ("jxl", lambda p: colour.save(p, effort=1, quality=80)),
        "webp": ("webp", lambda p: colour.save(p, method=0, quality=50)),
        "dng": ("dng", lambda p: write_dng(p, colour.resize((2400, 1600)))),  # quicker to write
    }
    extension, write = cases[kind]
    path = folder / f"{kind}.{extension}"
    write(path)
    return path


@pytest.mark.parametrize("kind", ["png-16-bit-grey", "png-rgba", "avif", "jxl", "webp", "dng"])
def test_decoding_takes_no_more_memory_than_it_reserved(tmp_path: Path, kind: str) -> None:
    """In a fresh process: what preparing the file added to the peak RSS stays within the
    cost weighed from its header and reserved from the budget."""
    path = write_case(tmp_path, kind)
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    before, after, reserved = map(int, done.stdout.split())
    assert 0 < after - before <= reserved, (kind, (after - before) // MB, reserved // MB)
