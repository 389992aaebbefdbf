"""The page in the browser's language, in real Chromium: a browser asking for Japanese
(`Accept-Language: ja`, navigator.language ja-JP) gets the page's labels, buttons,
placeholders and the selected result's link in Japanese, and the messages built on the server
too (the status line, the search's note, a wrong filter's message next to its field, the
Rescan's summary); one asking for English gets English. The words expected are web_text's,
whatever they are."""

from __future__ import annotations

import itertools
import re
import string
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, PageEvents, running_page
from fake_model import (
    FakeColourModel,
    fake_embedder,
    fake_model_settings,
    index_palette,
)

from image_search.config import Settings
from image_search.web_text import LANGUAGES as COLUMNS
from image_search.web_text import MESSAGES, TEXTS, description_words, summary_words

pytestmark = pytest.mark.browser

_tables = itertools.count(1)
LANGUAGES = {"ja-JP": 1, "en-US": 0}  # the browser's locale → its column in TEXTS
# Shown on the page as it opens (the rest is folded away or shown after a search).
LABELS = (
    "search_tab",
    "duplicates_tab",
    "query_image",
    "text",
    "but_not",
    "words",
    "text_weight",
    "top_k",
    "search",
    "rescan",
    "best_match",
    "ranked_results",
    "filters",
    "results_json",
)
PLACEHOLDERS = {
    "#query-text textarea": "text_placeholder",
    "#query-not textarea": "but_not_placeholder",
    "#query-words textarea": "words_placeholder",
}


def fixed_words(key: str, column: int) -> list[str]:
    """The words of a message that stay whatever its values are, as the page shows them
    (Markdown's marks gone)."""
    return template_words(MESSAGES[key][column])


def template_words(template: str) -> list[str]:
    """The words of a template between its {fields}, Markdown's marks gone."""
    pieces = [text for text, *_ in string.Formatter().parse(template)]
    words = [re.sub(r"[*`]", "", piece).strip() for piece in pieces]
    return [word for word in words if word]


def expect_message(expect: Any, locator: Any, key: str, column: int) -> None:
    for words in fixed_words(key, column):
        expect(locator).to_contain_text(words, timeout=60_000)


@pytest.fixture
def colours(tmp_path: Path, data_directory: Path) -> Settings:
    settings = fake_model_settings(tmp_path, data_directory, f"page_language_{next(_tables)}")
    index_palette(settings, FakeColourModel())
    return settings


@pytest.mark.parametrize("locale", list(LANGUAGES))
def test_the_page_speaks_the_browsers_language(
    colours: Settings, locale: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    column = LANGUAGES[locale]
    other = 1 - column
    words = {key: texts[column] for key, texts in TEXTS.items()}
    with running_page(colours, fake_embedder(FakeColourModel())) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        events = PageEvents(page)
        asked = page.goto(url).request.header_value("accept-language") or ""
        assert asked.startswith(locale), asked
        status = page.locator("#status")
        expect_message(expect, status, "status", column)
        assert max(fixed_words("status", other), key=len) not in status.inner_text()
        body = page.locator("body")
        expect(body).to_contain_text(words["intro"].splitlines()[-1])
        for key in LABELS:
            expect(body).to_contain_text(words[key])
        for selector, key in PLACEHOLDERS.items():
            expect(page.locator(selector)).to_have_attribute("placeholder", words[key])
        shown = body.inner_text()
        assert TEXTS["best_match"][other] not in shown
        assert TEXTS["query_image"][other] not in shown

        page.locator("#query-text textarea").fill("white")
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect_message(expect, note, "searched", column)
        assert max(fixed_words("searched", other), key=len) not in note.inner_text()
        described = description_words(COLUMNS[column])["text"].format(value="white")
        expect(note).to_contain_text(described)
        expect(page.locator("#best-original")).to_contain_text(words["download"])
        page.locator("#gallery .thumbnail-item").first.click()
        expect(page.locator("#open-original")).to_have_text(words["open_original"])
        expect(page.locator("#selected-words textarea")).to_have_value(words["words_not_read"])
        expect(body).to_contain_text(words["find_similar"])

        events.settle()  # the selection's events over: their status would wipe the message
        page.locator("#filters").click()
        page.locator("#taken-after textarea").fill("2024-13-45")
        page.locator("#search").click()
        field = page.locator("#taken-after")
        expect(field).to_contain_text(f"{words['taken_after']}", timeout=30_000)
        expect_message(expect, field, "expected_date", column)
        page.screenshot(path=str(tmp_path / f"page-{locale}.png"), full_page=True)
        page.locator("#taken-after textarea").fill("")

        page.locator("#rescan").click()
        rescanned = page.locator("#rescan-note")
        expect_message(expect, rescanned, "rescan_finished", column)
        for counted in template_words(summary_words(COLUMNS[column])["counts"]):
            expect(rescanned).to_contain_text(counted)

        page.get_by_role("tab", name=words["duplicates_tab"]).click()
        expect(page.locator("#find-duplicates")).to_have_text(words["find_duplicates"])
        expect(body).to_contain_text(words["threshold"])
        page.locator("#find-duplicates").click()
        note = page.locator("#duplicates-note")
        either = ("duplicates_none", "duplicates_found")  # as the palette's colours fall
        longest = [max(fixed_words(key, column), key=len) for key in either]
        expect(note).to_contain_text(re.compile("|".join(map(re.escape, longest))), timeout=60_000)
        said = note.inner_text()
        assert any(all(word in said for word in fixed_words(key, column)) for key in either)
        browser.close()
