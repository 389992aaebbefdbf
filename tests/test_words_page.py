"""The page's "Words in the photo" box in real Chromium, with the real OCR models: a search
by a word on a sign finds it first, and the selected result shows the text read in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from signs import write_plain, write_sign
from test_web import CHROMIUM, running_page

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def signs(make_settings, shared_embedder: Embedder) -> Settings:
    settings = make_settings(resize_width=640, resize_height=360, ocr=True)
    folder = settings.source_directory
    write_sign(folder / "receipts" / "shop.jpg", "INVOICE 2024", background="coffee.webp")
    write_sign(folder / "station.jpg", "PLATFORM 4", background="rocket.jpg", turn=-4)
    write_plain(folder / "cat.jpg", background="chelsea.jpg")
    run_index(settings, shared_embedder)
    return settings


def test_the_word_box_finds_a_sign_and_shows_its_text(
    signs: Settings, shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_page(signs, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.locator("#query-words textarea").fill("invoice")
        page.locator("#query-words textarea").press("Enter")
        expect(page.locator("#result-note")).to_contain_text("words 'invoice'", timeout=60_000)
        first = page.locator("#gallery .thumbnail-item").first
        expect(first).to_contain_text("shop.jpg")
        expect(page.locator("#gallery .thumbnail-item")).to_have_count(1)  # nothing else holds it

        first.click()
        expect(page.locator("#selected-path textarea")).to_have_value(
            str(signs.source_directory / "receipts" / "shop.jpg")
        )
        expect(page.locator("#selected-words textarea")).to_have_value("INVOICE 2024")
        page.screenshot(path=str(tmp_path / "words.png"), full_page=True)

        # The words with a text query: one ranking, both parts named in the note.
        page.locator("#query-words textarea").fill("platform")
        page.locator("#query-text textarea").fill("a railway station")
        page.locator("#search").click()
        expect(page.locator("#result-note")).to_contain_text(
            "text 'a railway station' + words 'platform'", timeout=60_000
        )
        # A new search clears the selection: the gallery is a grid, each caption names its file.
        thumbnails = page.locator("#gallery .thumbnail-item")
        expect(thumbnails.first).to_contain_text("station.jpg")
        thumbnails.filter(has_text="cat.jpg").click()
        expect(page.locator("#selected-words textarea")).to_have_value(
            "(no text found in this photo)"
        )


def test_the_words_through_the_page_api(signs: Settings, shared_embedder: Embedder) -> None:
    with running_page(signs, shared_embedder) as url:
        client = Client(url, verbose=False)
        *_, results = client.predict(
            None, "", 3, 0.5, "", "", "", 0, "", "platfrm", api_name="/search"
        )
    assert results["results"][0]["file_name"] == "station.jpg", json.dumps(results)
