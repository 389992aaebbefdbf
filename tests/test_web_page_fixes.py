"""What a new user met on the page (issue 25 item 7), in real Chromium: Find similar's new
results and the old selection, a camera RAW in the query box, the files a Rescan skipped,
and long paths in the Duplicates tab."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHROMIUM, running_page
from gradio_client import Client
from imagegen import photo, write_broken_files, write_dng, write_photo
from test_web_explore import thumbnail

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder

pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def test_new_results_clear_the_selection_they_would_contradict(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    """A result selected (the gallery's preview open on it, the panel naming it), then Find
    similar: the preview must not show another picture at the same index while the panel
    names the old one. The new results come with nothing selected."""
    from playwright.sync_api import expect

    run_index(settings, shared_embedder)
    with running_page(settings, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#query-text textarea").fill("a photo")
        page.locator("#top-k input[type=number]").fill(str(len(photos)))
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("text 'a photo'", timeout=60_000)
        items = page.locator("#gallery .thumbnail-item")
        chosen = items.nth(3).inner_text().split("·")[-1].strip()
        items.nth(3).click()
        expect(page.locator("#gallery .preview")).to_have_count(1)
        expect(page.locator("#selected-path textarea")).to_have_value(
            str(next(p for p in photos if p.name == chosen))
        )
        page.locator("#find-similar").click()
        expect(note).to_contain_text(f"like {chosen}", timeout=30_000)
        expect(page.locator("#gallery .preview")).to_have_count(0)
        expect(page.locator("#selected-path")).to_be_hidden()
        page.screenshot(path=str(tmp_path / "after-find-similar.png"), full_page=True)
        second = items.nth(1).inner_text().split("·")[-1].strip()
        items.nth(1).click()  # a selection among the new results names what it shows
        expect(page.locator("#selected-path textarea")).to_have_value(
            str(next(p for p in photos if p.name == second))
        )
        expect(page.locator("#gallery .preview")).to_contain_text(second)


def test_a_camera_raw_upload_shows_its_preview_and_is_searched_itself(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    raw = write_dng(settings.source_directory / "shot.dng", photo(seed=33, width=96, height=64))
    run_index(settings, shared_embedder)
    query = tmp_path / "upload" / "shot.dng"
    query.parent.mkdir()
    query.write_bytes(raw.read_bytes())
    with running_page(settings, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#query-image input[type=file]").set_input_files(str(query))
        shown = page.locator("#query-image img")
        expect(shown).to_have_count(1, timeout=60_000)
        page.wait_for_function(
            "() => { const i = document.querySelector('#query-image img');"
            " return i && i.complete && i.naturalWidth > 0 && !i.src.endsWith('.dng'); }",
            timeout=60_000,
        )
        size = shown.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        page.screenshot(path=str(tmp_path / "raw-query.png"), full_page=True)
        page.locator("#search").click()
        expect(page.locator("#result-note")).to_contain_text("Result folder", timeout=60_000)
        expect(thumbnail(page, "shot.dng")).to_contain_text("1.000 · shot.dng")
    assert size[0] * 2 == size[1] * 3  # the RAW decoded: a 96 x 64 photo's shape


def test_rescan_names_the_files_it_skipped(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    broken = write_broken_files(settings.source_directory / "broken")
    with running_page(settings, shared_embedder) as url:
        note, _ = Client(url, verbose=False).predict(api_name="/rescan")
    assert f"{len(broken)} skipped" in note
    listed = re.sub("<span[^>]*>|</span>", "", note.split('<ul id="rescan-skipped">')[1])
    for path in broken:
        assert f"<code>{path}</code>: " in listed


def test_long_paths_in_the_duplicates_tab_break_after_separators(
    make_settings, shared_embedder: Embedder, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    settings = make_settings(source_directory=tmp_path / "Pictures")
    deep = ["Holidays", "2023-summer", "Brittany", "coast", "camera-roll", "originals"]
    first = write_photo(settings.source_directory.joinpath(*deep) / "IMG_0412.jpg", seed=5)
    copy = settings.source_directory.joinpath("backup", *deep) / "IMG_0412.jpg"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(first.read_bytes())
    run_index(settings, shared_embedder)
    with running_page(settings, shared_embedder) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Duplicates").click()
        page.locator("#duplicate-threshold input[type=number]").fill("0.999")
        page.locator("#find-duplicates").click()
        captions = page.locator("#duplicate-groups figcaption")
        expect(captions).to_have_count(2, timeout=60_000)
        page.screenshot(path=str(tmp_path / "duplicates-paths.png"), full_page=True)
        breaks = captions.evaluate_all(LINE_BREAKS)
    assert all(len(lines) > 3 for lines in breaks)  # the paths do wrap
    for lines in breaks:
        for line in lines[:-1]:
            # A line ends after a separator, unless one folder's name is wider than the box
            # (then its own lines hold no separator but their last).
            assert line.endswith("/") or "/" not in line, lines


# The text of each line a caption is laid out in, from where each character sits.
LINE_BREAKS = """captions => captions.map(caption => {
  const lines = [];
  let top = null;
  const walker = document.createTreeWalker(caption, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (!rect) continue;
      if (top === null || rect.top > top + 2) { lines.push(""); top = rect.top; }
      lines[lines.length - 1] += node.data[i];
    }
  }
  return lines.map(line => line.trim());
})"""
