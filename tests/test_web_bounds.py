"""The page's side of finite queries and usable paths (issue 24 items 5 and 9): a "…but not"
that takes the whole query away is said next to its box, never a NaN caption; each part's
weight in the note; NUL bytes and other unusable paths one clear message with no traceback in
the server's log; the folder filters accept every spelling the command line's --under does."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, PageEvents, run_cli, running_page, stored_rows, write_config
from fake_model import (
    FakeColourModel,
    fake_embedder,
    fake_model_settings,
    index_palette,
)
from gradio_client import Client
from imagegen import write_photo
from PIL import Image
from test_query_parts import LIBRARY
from test_web_hardening import call, served

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.web_inputs import BUT_NOT_CANCELS, PATH_LABEL, UNDER_LABEL

_tables = itertools.count(1)


@pytest.fixture
def colours(tmp_path: Path, data_directory: Path) -> Settings:
    settings = fake_model_settings(
        tmp_path, data_directory, f"page_bounds_{next(_tables)}", top_k=len(LIBRARY)
    )
    index_palette(settings, FakeColourModel(), LIBRARY)
    return settings


def test_but_not_equal_to_the_words_is_refused_through_the_api(colours: Settings) -> None:
    with running_page(colours, fake_embedder(FakeColourModel())) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match=re.escape(BUT_NOT_CANCELS)):
            client.predict(None, "red", 5, 0.5, "", "", "", 0, "red", api_name="/search")
        with pytest.raises(Exception, match="the weight must be a number from 0.001 to 1000"):
            client.predict(None, "red", 5, 0.5, "", "", "", 0, "1e300:blue", api_name="/search")
        # Words the model reads alike ("Red", "red"): only their vectors show it.
        with pytest.raises(Exception, match="cancel each other out"):
            client.predict(None, "Red", 5, 0.5, "", "", "", 0, "red", api_name="/search")
        *_, note, results = client.predict(
            None, "white", 5, 0.5, "", "", "", 0, "0.5:red", api_name="/search"
        )
    assert not colours.output_directory.exists() or len(
        list(colours.output_directory.iterdir())
    ) == 1  # the one search that ran
    assert "1 × text 'white' - 0.5 × text 'red'" in note
    assert len(results["results"]) == 5


@pytest.mark.browser
def test_but_not_equal_to_the_words_is_said_next_to_its_box(
    colours: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with running_page(colours, fake_embedder(FakeColourModel())) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        events = PageEvents(page)
        page.goto(url)
        page.locator("#query-text textarea").fill("white")
        page.locator("#query-not textarea").fill("0.5:red")
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("1 × text 'white' - 0.5 × text 'red'", timeout=60_000)
        events.settle()
        page.locator("#query-text textarea").fill("red")
        page.locator("#query-not textarea").fill("red")
        page.locator("#search").click()
        expect(page.locator("#query-not")).to_contain_text(BUT_NOT_CANCELS, timeout=30_000)
        page.screenshot(path=str(tmp_path / "but-not-cancels.png"), full_page=True)
        captions = page.locator("#gallery .thumbnail-item .caption-label").all_inner_texts()
        shown = note.inner_text()
        browser.close()
    assert captions and not any("nan" in caption.lower() for caption in captions)
    assert "0.5 × text 'red'" in shown  # the results of the last search that ran stay


@pytest.mark.browser
def test_a_search_asked_for_while_one_runs_is_run_after_it(colours: Settings) -> None:
    """Gradio's default for a click drops a second click while the first search is pending:
    the page would show the first query's results under the second query's words."""
    from playwright.sync_api import expect, sync_playwright

    with running_page(colours, fake_embedder(FakeColourModel())) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#query-text textarea").fill("white")
        page.locator("#search").click()
        page.locator("#query-text textarea").fill("red")  # at once: the first is still running
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("text 'red'", timeout=60_000)
        browser.close()


# -- unusable paths -----------------------------------------------------------------------


@pytest.fixture
def indexed(settings: Settings, photos: list[Path], shared_embedder: Embedder) -> list[Path]:
    run_index(settings, shared_embedder)
    return photos


def refusal(event: str, data: str) -> str:
    """The message of a refused call: the handler's error, or the validator's (Gradio
    answers HTTP 422 with each field's verdict)."""
    if event == "error":
        return json.loads(data)["error"]
    assert event == "HTTP 422", (event, data)
    return "; ".join(v["message"] for v in json.loads(data)["detail"] if not v["is_valid"])


def test_a_nul_byte_in_a_path_is_one_message_and_no_traceback(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, capfd
) -> None:
    nul = str(indexed[0]) + "\0.jpg"
    with running_page(settings, shared_embedder) as url:
        answers = {
            "similar": call(url, "similar", [nul, 3, "", "", "", 0]),
            "under": call(url, "similar", [str(indexed[0]), 3, nul, "", "", 0]),
            "surrogate": call(url, "similar", [str(indexed[0])[:-4] + "\ud800.jpg", 3, "", "", "",
                                               0]),
            "long": call(url, "similar", ["/" + "x" * 5000, 3, "", "", "", 0]),
            "duplicates": call(url, "duplicates", [0.95, nul]),
            "upload": call(url, "search", [{"path": nul}, "", 3, 0.5, "", "", "", 0, "", ""]),
        }
    log = capfd.readouterr()
    messages = {name: refusal(*answer) for name, answer in answers.items()}
    assert messages["similar"] == f"{PATH_LABEL}: not a usable path (it holds a NUL character)"
    assert messages["under"] == f"{UNDER_LABEL}: not a usable path (it holds a NUL character)"
    assert "not a usable path (it holds characters no file name can)" in messages["surrogate"]
    assert "not a usable path (longer than 4096 bytes)" in messages["long"]
    assert "not a usable path (it holds a NUL character)" in messages["duplicates"]
    assert "not one uploaded to this page" in messages["upload"]
    assert "Traceback" not in log.err + log.out and "ValueError" not in log.err + log.out


def test_a_folder_filter_that_does_not_exist_is_named(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder"
    with running_page(settings, shared_embedder) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match=f"{re.escape(UNDER_LABEL)}: no such folder"):
            client.predict(str(indexed[0]), 3, str(missing), api_name="/similar")


# -- the folder filters take every spelling of a folder -----------------------------------


@pytest.mark.parametrize("indexed_through", ["link", "physical"])
def test_folder_filters_on_the_page_match_the_command_line(
    make_settings, shared_embedder: Embedder, tmp_path: Path, indexed_through: str
) -> None:
    """source-directory a link to the photos (or the photos themselves), the folder given
    by the other path: the page finds what `--under` finds, in Find similar and Duplicates."""
    physical = tmp_path / "disk" / "photos"
    first = write_photo(physical / "2023" / "a.jpg", seed=1)
    (physical / "2023" / "copy.jpg").write_bytes(first.read_bytes())
    write_photo(physical / "2023" / "b.png", seed=2)
    (physical / "2024").mkdir()
    (physical / "2024" / "copy.jpg").write_bytes(first.read_bytes())
    link = tmp_path / "photos-link"
    link.symlink_to(physical, target_is_directory=True)
    source = link if indexed_through == "link" else physical
    other = physical if indexed_through == "link" else link
    settings = make_settings(source_directory=source, top_k=10, save_results=False)
    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)
    like = source / "2023" / "a.jpg"
    on_the_command_line = run_cli(
        "search", "--env", str(config), "--json", "--like", str(like), "--under",
        str(other / "2023"),
    )
    expected = {r["file_path"] for r in json.loads(on_the_command_line.stdout)["results"]}
    assert expected == {str(source / "2023" / name) for name in ("a.jpg", "copy.jpg", "b.png")}

    with running_page(settings, shared_embedder) as url:
        client = Client(url, verbose=False)
        *_, similar = client.predict(str(like), 10, str(other / "2023"), api_name="/similar")
        _, _, groups = client.predict(0.99, str(other / "2023"), api_name="/duplicates")
    assert {r["file_path"] for r in similar["results"]} == expected
    assert [sorted(f["file_path"] for f in g["files"]) for g in groups["groups"]] == [
        sorted(str(source / "2023" / name) for name in ("a.jpg", "copy.jpg"))
    ]


# -- the page's cache has a bound ---------------------------------------------------------


def noise_photo(path: Path, seed: int) -> Path:
    """A photo that JPEG cannot shrink much: about 0.4 MB as a 960 x 540 processed JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (540, 960, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_the_page_cache_stays_within_its_bound_and_keeps_what_a_page_shows(
    make_settings, shared_embedder: Embedder
) -> None:
    settings = make_settings(resize_width=960, resize_height=540, page_cache_mb=3,
                             save_results=False)
    photos = [noise_photo(settings.source_directory / f"noise-{i}.png", i) for i in range(10)]
    run_index(settings, shared_embedder)
    with served(settings, shared_embedder) as (url, app):
        cache = app.web.cache.folder
        first, other = Client(url, verbose=False), Client(url, verbose=False)
        *_, shown = first.predict(str(photos[0]), 2, api_name="/similar")
        kept = {name: cached_copy(cache, name, settings) for name in names_of(shown)}
        sizes = []
        for photo in photos[1:]:  # another page, looking at one result after another
            other.predict(str(photo), 2, api_name="/similar")
            sizes.append(cache_bytes(cache))
        still = {name: path.is_file() for name, path in kept.items()}
        served_again = [
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=30).status
            for path in kept.values()
        ]
    assert max(sizes) <= 3_000_000, sizes
    assert all(still.values()) and served_again == [200, 200]


def names_of(answer: dict) -> list[str]:
    return [Path(r["file_path"]).name for r in answer["results"]]


def cached_copy(cache: Path, name: str, settings: Settings) -> Path:
    """Where the page's cache keeps the thumbnail of a result (by its content's hash)."""
    processed = next(Path(r["processed_path"]) for r in stored_rows(settings)
                     if Path(r["file_path"]).name == name)
    digest = hashlib.sha256(processed.read_bytes()).hexdigest()
    return cache / digest / processed.name


def cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
