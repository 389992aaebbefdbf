"""The page's library tools in real Chromium: Find similar and Open original on a selected
result, whole captions, image + text together, filters, the Duplicates tab."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from conftest import EMBEDDING_DIM, PageEvents
from gradio_client import Client, handle_file
from imagegen import write_photo
from test_web import running_page

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder, load_model
from image_search.store import Database
from image_search.web import WebApp

LONG_NAME = "a-rather-long-file-name-straight-from-the-camera-0001.jpg"


class CountingEmbedder(Embedder):
    """The tiny model, counting the images it is asked to embed."""

    def __init__(self, model: Path) -> None:
        super().__init__(str(model), "cpu", EMBEDDING_DIM, loader=load_model)
        self.images_embedded = 0

    def embed_images(self, images):  # type: ignore[no-untyped-def]
        self.images_embedded += len(images)
        return super().embed_images(images)


@pytest.fixture
def library(settings: Settings, photos: list[Path]) -> list[Path]:
    """The six photos, one with a long name, and a byte-identical copy in a backup folder."""
    long = write_photo(settings.source_directory / LONG_NAME, seed=40)
    copy = settings.source_directory / "backup" / photos[0].name
    copy.parent.mkdir()
    copy.write_bytes(photos[0].read_bytes())
    return [*photos, long, copy]


def result_folder(page) -> Path:  # type: ignore[no-untyped-def]
    text = page.locator("#result-note").inner_text()
    return Path(text.split("Result folder:")[1].split()[0].strip("`"))


def thumbnail(page, name: str):  # type: ignore[no-untyped-def]
    return page.locator("#gallery .thumbnail-item").filter(has_text=name)


def test_find_similar_and_open_original_from_a_selected_result(
    settings: Settings, library: list[Path], tiny_clip: Path, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    embedder = CountingEmbedder(tiny_clip)
    run_index(settings, embedder)
    target = settings.source_directory / LONG_NAME
    with running_page(settings, embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#query-text textarea").fill("a photo")
        page.locator("#top-k input[type=number]").fill(str(len(library)))
        page.locator("#search").click()
        expect(page.locator("#result-note")).to_contain_text("text 'a photo'", timeout=60_000)

        caption = thumbnail(page, LONG_NAME).locator(".caption-label")
        expect(caption).to_contain_text(LONG_NAME)
        box = caption.evaluate(
            "e => ({sw: e.scrollWidth, cw: e.clientWidth, sh: e.scrollHeight, ch: e.clientHeight,"
            " top: e.getBoundingClientRect().top,"
            " imageBottom: e.parentElement.querySelector('img').getBoundingClientRect().bottom})"
        )
        assert box["sw"] <= box["cw"] + 1 and box["sh"] <= box["ch"] + 1  # nothing cut off
        assert box["top"] >= box["imageBottom"] - 1  # under the photo, not over it
        page.screenshot(path=str(tmp_path / "captions.png"), full_page=True)

        before = embedder.images_embedded
        thumbnail(page, LONG_NAME).click()
        expect(page.locator("#selected-path textarea")).to_have_value(str(target))
        link = page.locator("#open-original")
        expect(link).to_have_text("Open original")
        original = page.request.get(url + link.get_attribute("href"))
        assert original.status == 200 and original.body() == target.read_bytes()

        page.locator("#find-similar").click()
        expect(page.locator("#result-note")).to_contain_text(f"like {LONG_NAME}", timeout=30_000)
        expect(page.locator("#gallery")).to_contain_text(f"1.000 · {LONG_NAME}")
        page.screenshot(path=str(tmp_path / "find-similar.png"), full_page=True)
        folder = result_folder(page)
    assert embedder.images_embedded == before  # the stored vector, no model
    first = json.loads((folder / "results.jsonl").read_text().splitlines()[0])
    assert (first["file_path"], first["score"]) == (str(target), pytest.approx(1.0, abs=1e-6))
    assert (folder / "query.jpg").is_file() and not (folder / "query.txt").exists()


def test_image_and_text_together_and_filters_in_the_browser(
    settings: Settings, library: list[Path], shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    run_index(settings, shared_embedder)
    sub = settings.source_directory / "sub"
    with running_page(settings, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        events = PageEvents(page)
        page.goto(url)
        page.locator("#query-image input[type=file]").set_input_files(str(library[1]))
        page.locator("#query-text textarea").fill("at night")
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("0.5 × image + 0.5 × text 'at night'", timeout=60_000)
        combined = result_folder(page)

        page.locator("#filters").click()
        page.locator("#filter-under textarea").fill(str(sub))
        page.locator("#search").click()
        expect(note).to_contain_text(f"under {sub}", timeout=30_000)
        expect(page.locator("#gallery .thumbnail-item")).to_have_count(2)
        page.screenshot(path=str(tmp_path / "filters.png"), full_page=True)
        filtered = result_folder(page)

        events.settle()  # the last search's follow-ups over: their status would wipe the message
        page.locator("#taken-after textarea").fill("someday")
        page.locator("#search").click()
        expect(page.get_by_text("Taken on or after: expected a date")).to_be_visible(timeout=30_000)
    assert {"query.jpg", "query.txt"} <= {p.name for p in combined.iterdir()}
    lines = [json.loads(line) for line in (filtered / "results.jsonl").read_text().splitlines()]
    assert sorted(line["file_path"] for line in lines) == sorted(
        str(p) for p in library if sub in p.parents
    )


def test_the_duplicates_tab_shows_groups_as_thumbnails_with_paths(
    settings: Settings, library: list[Path], shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    run_index(settings, shared_embedder)
    original, copy = library[0], library[-1]
    with running_page(settings, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Duplicates").click()
        page.locator("#duplicate-threshold input[type=number]").fill("0.999")
        page.locator("#find-duplicates").click()
        groups = page.locator("#duplicate-groups")
        expect(groups).to_contain_text(str(copy), timeout=60_000)
        expect(page.locator("#duplicates-note")).to_contain_text("1 group,")
        figures = groups.locator("figure")
        expect(figures).to_have_count(2)
        expect(figures.first).to_contain_text(f"keep {original}")  # older by a few moments
        page.wait_for_function(
            "() => [...document.querySelectorAll('#duplicate-groups img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)


def test_open_original_is_behind_the_login_and_only_for_indexed_files(
    settings: Settings, library: list[Path], shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    run_index(settings, shared_embedder)
    protected = dataclasses.replace(settings, server_auth="alice:Wonder-land-9")
    outside = write_photo(tmp_path / "not-indexed.png", seed=77)
    with running_page(protected, shared_embedder) as url:
        page = browser.new_page()
        page.goto(url)
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("Wonder-land-9")
        page.get_by_role("button", name="Login").click()
        page.locator("#query-text textarea").fill("a photo")
        page.locator("#search").click()
        expect(page.locator("#result-note")).to_contain_text("Result folder", timeout=60_000)
        page.locator("#gallery .thumbnail-item").first.click()
        href = page.locator("#open-original").get_attribute("href")
        assert page.request.get(url + href).status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + href)  # no login cookie
        assert refused.value.code in (401, 403)

        client = Client(url, auth=("alice", "Wonder-land-9"), verbose=False)
        with pytest.raises(Exception, match="not indexed"):
            client.predict(str(outside), 3, api_name="/similar")
        *_, similar = client.predict(str(library[2]), 3, api_name="/similar")
        assert similar["results"][0]["file_path"] == str(library[2])
    with Database(settings) as database:
        app = WebApp(settings, shared_embedder, database)
        with pytest.raises(gr.Error, match="not indexed"):
            app.original_link(str(outside))


def test_the_search_api_takes_the_old_three_arguments_and_the_new_ones(
    settings: Settings, library: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    sub = settings.source_directory / "sub"
    with running_page(settings, shared_embedder) as url:
        client = Client(url, verbose=False)
        *_, old = client.predict(handle_file(str(library[3])), "", 3, api_name="/search")
        note, new = client.predict(
            handle_file(str(library[3])), "", 10, 0.5, str(sub), "", "", 0, api_name="/search"
        )[2:]
    assert old["results"][0]["file_path"] == str(library[3])
    assert all("taken_at" in record for record in old["results"])
    assert {r["file_path"] for r in new["results"]} == {str(p) for p in library if sub in p.parents}
    assert "image" in note and f"under {sub}" in note
