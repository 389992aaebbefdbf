"""The fast tier (`uv run pytest -m fast`): planning, batching, progress and ranking with a
deterministic fake model whose vectors are known, against the real embedded PostgreSQL.

Every expected ranking is computed here with numpy from the fake model's vectors, so a test
fails when the code ranks differently from what those vectors imply."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import distinct_ranking
from fake_model import (
    FAKE_DIMENSION,
    PALETTE,
    Colour,
    FakeColourModel,
    colour_vector,
    fake_embedder,
    fake_model_settings,
    index_palette,
    solid_photo,
    text_vector,
    write_palette,
)
from PIL import Image

from image_search.config import Settings
from image_search.ingest import (
    Failure,
    Progress,
    RunStopped,
    WorkItem,
    plan,
    run_index,
)
from image_search.models import Embedder
from image_search.pipeline import prepared_batches
from image_search.result_folder import RESULTS_FILE
from image_search.scan import ScannedFile
from image_search.search import Searcher, SearchResult
from image_search.store import StoredFile, open_store

pytestmark = pytest.mark.fast

SCORE_TOLERANCE = 1e-4  # vectors are float32 in the table
_tables = itertools.count(1)


# -- planning: which scanned files need work ---------------------------------


def scanned(name: str, size: int = 100, mtime_ns: int = 1) -> ScannedFile:
    return ScannedFile(path=f"/photos/{name}", size=size, mtime_ns=mtime_ns)


def stored(row_id: int, name: str, size: int = 100, mtime_ns: int = 1) -> StoredFile:
    return StoredFile(row_id, f"/photos/{name}", size, mtime_ns, content_hash=f"hash-{row_id}")


def test_plan_splits_work_unchanged_and_missing() -> None:
    new, same, grown, touched = (
        scanned("new.jpg"),
        scanned("same.jpg"),
        scanned("grown.jpg", size=200),
        scanned("touched.jpg", mtime_ns=2),
    )
    rows = [stored(1, "same.jpg"), stored(2, "grown.jpg"), stored(3, "touched.jpg")]
    gone = [stored(4, "gone.jpg"), stored(5, "also-gone.jpg")]
    by_path = {row.file_path: row for row in rows + gone}

    work, unchanged, missing = plan([new, same, grown, touched], by_path)

    assert work == [WorkItem(new, None), WorkItem(grown, rows[1]), WorkItem(touched, rows[2])]
    assert unchanged == 1
    assert missing == gone


def test_plan_with_nothing_stored_is_all_work() -> None:
    files = [scanned("a.jpg"), scanned("b.jpg")]
    assert plan(files, {}) == ([WorkItem(files[0], None), WorkItem(files[1], None)], 0, [])


def test_plan_of_an_empty_folder_marks_every_row_missing() -> None:
    rows = {row.file_path: row for row in [stored(1, "a.jpg"), stored(2, "b.jpg")]}
    assert plan([], rows) == ([], 0, list(rows.values()))


# -- batching: preparing in a pool, a batch at a time --------------------------


class RecordingExecutor(Executor):
    """Runs each task at once in the caller's thread and records what was submitted, so a
    test sees exactly which items had been handed to the pool when a batch came out."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted.extend(args)
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller, as a real pool does
            future.set_exception(exc)
        return future


def doubled(item: int) -> int:
    return item * 2


def batches_with_submissions(
    overlap: bool, work: Sequence[int], batch_size: int
) -> list[tuple[list[int], list[int]]]:
    """Each batch as it came out, with the items submitted to the pool by then."""
    pool = RecordingExecutor()
    return [
        (batch, list(pool.submitted))
        for batch in prepared_batches(pool, doubled, work, batch_size, overlap)
    ]


def test_batches_keep_order_and_size_and_take_turns_without_overlap() -> None:
    seen = batches_with_submissions(overlap=False, work=range(7), batch_size=3)
    assert seen == [
        ([0, 2, 4], [0, 1, 2]),  # the second batch waits until the caller is done
        ([6, 8, 10], [0, 1, 2, 3, 4, 5]),
        ([12], [0, 1, 2, 3, 4, 5, 6]),
    ]


def test_batches_prepare_the_next_one_ahead_with_overlap() -> None:
    seen = batches_with_submissions(overlap=True, work=range(7), batch_size=3)
    assert seen == [
        ([0, 2, 4], [0, 1, 2, 3, 4, 5]),  # the second batch is on its way already
        ([6, 8, 10], [0, 1, 2, 3, 4, 5, 6]),
        ([12], [0, 1, 2, 3, 4, 5, 6]),
    ]


@pytest.mark.parametrize("overlap", [False, True])
def test_no_work_gives_no_batches(overlap: bool) -> None:
    assert batches_with_submissions(overlap, work=[], batch_size=4) == []


def test_batches_keep_order_when_later_items_finish_first() -> None:
    """Within each batch the items finish last to first: each waits until the one after it
    (in its batch) has finished. A pool of one thread per item of a batch runs them all."""
    work, size = list(range(10)), 4
    finished: dict[int, threading.Event] = {item: threading.Event() for item in work}
    order: list[int] = []

    def last_first(item: int) -> int:
        after = item + 1
        if after in finished and after // size == item // size:
            assert finished[after].wait(timeout=60), f"{after} never finished"
        order.append(item)
        finished[item].set()
        return item

    with ThreadPoolExecutor(max_workers=size) as pool:
        batches = list(prepared_batches(pool, last_first, work, size, overlap=True))
    assert order == [3, 2, 1, 0, 7, 6, 5, 4, 9, 8]  # the inversion happened
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_failure_result_does_not_stop_the_rest() -> None:
    def prepare(item: int) -> int | Failure:
        return Failure(f"/photos/{item}.jpg", "cannot decode") if item % 3 == 1 else item

    batches = list(prepared_batches(RecordingExecutor(), prepare, list(range(6)), 4, False))
    assert batches == [
        [0, Failure("/photos/1.jpg", "cannot decode"), 2, 3],
        [Failure("/photos/4.jpg", "cannot decode"), 5],
    ]


# -- progress -----------------------------------------------------------------


def test_progress_callback_counts_finished_files_from_zero_to_total() -> None:
    calls: list[tuple[int, int]] = []
    progress = Progress(callback=lambda done, total: calls.append((done, total)))
    with progress.stages(3):
        for _ in range(3):
            progress.prepared()
        progress.embedded(3, 3, 0.1)
        assert calls == [(0, 3)]  # prepared is not finished: the bar ends when all is stored
        progress.passed(1)
        progress.stored(2)
    assert calls == [(0, 3), (1, 3), (3, 3)]


def drive_progress(progress: Progress) -> None:
    files = [scanned("a.jpg"), scanned("b.jpg")]
    assert list(progress.scanning(files)) == files
    with progress.stages(2):
        progress.prepared()
        progress.prepared()
        progress.passed()
        progress.embedded(1, 1, 0.1)
        progress.stored(1)


def test_progress_without_bars_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(show_bars=False)
    files = [scanned("a.jpg")]
    assert progress.scanning(files) is files  # not even wrapped
    drive_progress(progress)
    assert capsys.readouterr() == ("", "")


def test_progress_with_bars_shows_every_stage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are for a terminal only
    drive_progress(Progress(show_bars=True))
    err = capsys.readouterr().err
    for label in ("Scanning", *Progress.STAGES):
        assert label in err


def test_progress_announces_a_long_run_once(caplog: pytest.LogCaptureFixture) -> None:
    total, batch, seconds = 10_000, 16, 2.0
    progress = Progress()
    with caplog.at_level(logging.INFO, logger="image_search.ingest"), progress.stages(total):
        progress.embedded(batch, batch, seconds)
        progress.embedded(batch, batch, seconds)
    left, rate = total - batch, batch / seconds
    expected = f"embedding {left} images at {rate:.1f} images/s: about {round(left / rate / 60)}"
    assert [r.getMessage() for r in caplog.records] == [f"{expected} minutes left"]


def test_progress_keeps_a_short_run_quiet(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress()
    with caplog.at_level(logging.INFO, logger="image_search.ingest"), progress.stages(32):
        progress.embedded(16, 16, 1.0)
    assert caplog.records == []


# -- the fake model's known vectors ---------------------------------------------


def test_fake_model_vectors_are_the_known_ones() -> None:
    model = FakeColourModel()
    embedder = fake_embedder(model)
    red_axis = np.eye(FAKE_DIMENSION, dtype=np.float32)[0]
    images = [Image.new("RGB", (4, 4), PALETTE["red"]), Image.new("RGB", (4, 4), (0, 0, 0))]
    vectors = embedder.embed_images(images)
    assert vectors[0] == pytest.approx(red_axis)
    assert vectors[1] == pytest.approx(np.eye(FAKE_DIMENSION)[3])  # black: the dark axis
    assert embedder.embed_texts(["red"])[0] == pytest.approx(red_axis)
    assert embedder.embed_texts(["a cat"])[0][:4] == pytest.approx(np.zeros(4))
    assert (model.loads, model.image_batches, model.texts) == (1, [2], ["red", "a cat"])


# -- indexing and ranking with the fake model and the real database ------------


@pytest.fixture
def colour_settings(tmp_path: Path, data_directory: Path) -> Settings:
    """Settings for the fake model, in a table of this test's own on the session's server."""
    return fake_model_settings(
        tmp_path, data_directory, f"fast_{next(_tables)}", top_k=4, batch_size=2
    )


@pytest.fixture
def model() -> FakeColourModel:
    return FakeColourModel()


@pytest.fixture
def embedder(model: FakeColourModel) -> Embedder:
    return fake_embedder(model)


@pytest.fixture
def library(colour_settings: Settings, model: FakeColourModel) -> dict[str, Path]:
    """The palette as solid-colour photos, indexed."""
    return index_palette(colour_settings, model)


def distinct_order(scores: dict[str, float]) -> list[str]:
    """Names from the most to the least similar; the test data must not hold ties."""
    return distinct_ranking(scores, 100 * SCORE_TOLERANCE)


def expected_scores(query: np.ndarray, palette: dict[str, Colour] = PALETTE) -> dict[str, float]:
    """Cosine similarity of each palette photo to `query`, from the fake model's vectors."""
    vectors = np.stack([colour_vector(rgb) for rgb in palette.values()])
    return dict(zip(palette, (vectors @ query).tolist(), strict=True))


def ranked_names(result: SearchResult) -> list[str]:
    return [Path(match.file_path).stem for match in result.results]


@contextmanager
def searcher(settings: Settings, embedder: Embedder) -> Iterator[Searcher]:
    with open_store(settings) as store:
        yield Searcher(settings, store, embedder)


def test_index_sends_new_images_through_the_model_in_batches(
    colour_settings: Settings, embedder: Embedder, model: FakeColourModel
) -> None:
    write_palette(colour_settings.source_directory)
    report = run_index(colour_settings, embedder)
    assert (report.scanned, report.added, report.failed) == (len(PALETTE), len(PALETTE), [])
    full, rest = divmod(len(PALETTE), colour_settings.batch_size)
    assert model.image_batches == [colour_settings.batch_size] * full + [rest] * (rest > 0)
    assert model.loads == 1


def test_a_rerun_with_nothing_new_never_loads_the_model(
    library: dict[str, Path], colour_settings: Settings
) -> None:
    os.utime(library["teal"], ns=(1, 1))  # touched: same bytes, new mtime
    idle = FakeColourModel()
    report = run_index(colour_settings, fake_embedder(idle))
    count = len(PALETTE)
    assert (report.scanned, report.unchanged, report.added, report.updated) == (count, count, 0, 0)
    assert (idle.loads, idle.image_batches) == (0, [])


@pytest.mark.parametrize("colour", ["red", "green", "blue"])
def test_text_query_ranks_exactly_as_the_known_vectors_imply(
    library: dict[str, Path], colour_settings: Settings, embedder: Embedder, colour: str
) -> None:
    expected = expected_scores(text_vector(colour))
    with searcher(colour_settings, embedder) as search:
        result = search.by_text(colour, top_k=len(PALETTE))
    assert ranked_names(result) == distinct_order(expected)
    assert [m.score for m in result.results] == pytest.approx(
        sorted(expected.values(), reverse=True), abs=SCORE_TOLERANCE
    )
    assert [m.rank for m in result.results] == list(range(1, len(PALETTE) + 1))
    assert result.searched == len(PALETTE)


def test_red_text_query_puts_red_then_orange_first(
    library: dict[str, Path], colour_settings: Settings, embedder: Embedder
) -> None:
    with searcher(colour_settings, embedder) as search:
        result = search.by_text("red", top_k=2)
    assert ranked_names(result) == ["red", "orange"]
    assert result.results[0].score == pytest.approx(1.0, abs=SCORE_TOLERANCE)


def test_image_query_finds_its_colour_first_with_score_one(
    library: dict[str, Path], colour_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    query = solid_photo(tmp_path / "query.jpg", PALETTE["red"], size=(64, 40))
    expected = expected_scores(colour_vector(PALETTE["red"]))
    with searcher(colour_settings, embedder) as search:
        result = search.by_image(query, top_k=len(PALETTE))
    assert ranked_names(result) == distinct_order(expected)
    assert result.results[0].file_path == str(library["red"])
    assert result.results[0].score == pytest.approx(1.0, abs=1e-3)  # JPEG: red is 254, 0, 0


def test_top_k_limits_the_results(
    library: dict[str, Path], colour_settings: Settings, embedder: Embedder
) -> None:
    order = distinct_order(expected_scores(text_vector("blue")))
    with searcher(colour_settings, embedder) as search:
        assert ranked_names(search.by_text("blue", top_k=3)) == order[:3]
        assert ranked_names(search.by_text("blue")) == order[: colour_settings.top_k]
        assert ranked_names(search.by_text("blue", top_k=50)) == order


def test_result_folder_records_the_same_ranking(
    library: dict[str, Path], colour_settings: Settings, embedder: Embedder
) -> None:
    expected = expected_scores(text_vector("green"))
    order = distinct_order(expected)
    with searcher(colour_settings, embedder) as search:
        result = search.by_text("green", top_k=5)
    lines = (result.output_dir / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["rank"], r["file_name"], r["file_path"], r["searched"]) for r in records] == [
        (rank, f"{name}.png", str(library[name]), len(PALETTE))
        for rank, name in enumerate(order[:5], start=1)
    ]
    assert [r["score"] for r in records] == pytest.approx(
        [expected[name] for name in order[:5]], abs=SCORE_TOLERANCE
    )
    best = result.output_dir / f"{order[0]}.png"
    assert best.read_bytes() == library[order[0]].read_bytes()
    assert (result.output_dir / "query.txt").read_text(encoding="utf-8") == "green\n"


def test_copies_and_moves_reuse_the_stored_vector(
    colour_settings: Settings, embedder: Embedder, model: FakeColourModel
) -> None:
    folder = colour_settings.source_directory
    red = solid_photo(folder / "red.png", PALETTE["red"])
    copies = [folder / "a" / "red.png", folder / "b" / "red copy.png"]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copyfile(red, copy)
    blue = solid_photo(folder / "blue.png", PALETTE["blue"])

    report = run_index(colour_settings, embedder)
    assert (report.added, model.images_embedded) == (4, 2)  # three reds, one blue

    blue.rename(folder / "b" / "moved blue.png")
    report = run_index(colour_settings, embedder)
    assert (report.added, report.removed, model.images_embedded) == (1, 1, 2)

    with searcher(colour_settings, embedder) as search:
        result = search.by_text("red", top_k=4)
    reds = {str(p) for p in [red, *copies]}
    assert {m.file_path for m in result.results[:3]} == reds
    assert [m.score for m in result.results[:3]] == pytest.approx([1.0] * 3, abs=SCORE_TOLERANCE)
    assert result.results[3].file_path == str(folder / "b" / "moved blue.png")


def test_a_stop_ends_the_run_at_the_next_batch_boundary(
    colour_settings: Settings, embedder: Embedder, model: FakeColourModel
) -> None:
    write_palette(colour_settings.source_directory)
    stop = threading.Event()

    def report(done: int, total: int) -> None:
        if done:  # asked to stop while the first batch is being stored
            stop.set()

    with pytest.raises(RunStopped):
        run_index(colour_settings, embedder, progress=Progress(callback=report, stop=stop))

    batch = colour_settings.batch_size
    assert model.image_batches == [batch]  # the next batch never reached the model
    with open_store(colour_settings) as store:  # that batch is stored, whole
        assert len(store.rows.stored_files(str(colour_settings.source_directory))) == batch
    finished = run_index(colour_settings, embedder)
    assert (finished.added, finished.unchanged) == (len(PALETTE) - batch, batch)


def test_a_broken_file_is_reported_and_every_file_counts_in_progress(
    colour_settings: Settings, embedder: Embedder, model: FakeColourModel
) -> None:
    folder = colour_settings.source_directory
    palette = {name: PALETTE[name] for name in ("red", "green", "blue")}
    write_palette(folder, palette)
    broken = folder / "broken.png"
    broken.write_bytes(b"not a picture")
    calls: list[tuple[int, int]] = []
    progress = Progress(callback=lambda done, total: calls.append((done, total)))

    report = run_index(colour_settings, embedder, progress=progress)

    assert [failure.path for failure in report.failed] == [str(broken)]
    assert (report.scanned, report.added, model.images_embedded) == (4, 3, 3)
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
