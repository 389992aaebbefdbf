"""The page's "…but not" box (issue 20): the words in it are subtracted from the query, as
`--not` does; the ranking is computed here from the stored vectors (the fake colour model
gives exact vectors), through the API and in real Chromium."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import CHROMIUM, running_page
from fake_model import (
    FakeColourModel,
    fake_embedder,
    fake_model_settings,
    index_palette,
    text_vector,
)
from gradio_client import Client
from test_query_parts import LIBRARY, expected_ranking

from image_search.config import Settings
from image_search.result_folder import QUERY_RECORD_FILE

_tables = itertools.count(1)


@pytest.fixture
def colours(tmp_path: Path, data_directory: Path) -> Settings:
    settings = fake_model_settings(
        tmp_path, data_directory, f"page_parts_{next(_tables)}", top_k=len(LIBRARY)
    )
    index_palette(settings, FakeColourModel(), LIBRARY)
    return settings


def test_but_not_through_the_api(colours: Settings) -> None:
    names, scores = expected_ranking(
        colours, [(1.0, text_vector("white")), (-0.5, text_vector("red"))]
    )
    with running_page(colours, fake_embedder(FakeColourModel())) as url:
        client = Client(url, verbose=False)
        *_, note, results = client.predict(
            None, "white", len(LIBRARY), 0.5, "", "", "", 0, "0.5:red", api_name="/search"
        )
    assert [Path(r["file_path"]).stem for r in results["results"]] == names
    assert [r["score"] for r in results["results"]] == pytest.approx(scores, abs=1e-4)
    assert "1 × text 'white' - 0.5 × text 'red'" in note
    folder = Path(results["output_dir"])
    record = json.loads((folder / QUERY_RECORD_FILE).read_text(encoding="utf-8"))
    assert [(p["sign"], p["weight"], p["value"]) for p in record["parts"]] == [
        ("+", 1.0, "white"), ("-", 0.5, "red")
    ]


@pytest.mark.browser
def test_but_not_in_the_page(colours: Settings, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    names, _ = expected_ranking(colours, [(1.0, text_vector("white")), (-1.0, text_vector("red"))])
    with running_page(colours, fake_embedder(FakeColourModel())) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#query-text textarea").fill("white")
        page.locator("#query-not textarea").fill("red")
        page.locator("#top-k input[type=number]").fill(str(len(LIBRARY)))
        page.locator("#search").click()
        expect(page.locator("#result-note")).to_contain_text(
            "1 × text 'white' - 1 × text 'red'", timeout=60_000
        )
        captions = page.locator("#gallery .thumbnail-item .caption-label").all_inner_texts()
        page.screenshot(path=str(tmp_path / "but-not.png"), full_page=True)
        browser.close()
    assert [Path(c.split("·")[-1].strip()).stem for c in captions] == names
