"""The page's words (web_text): English and Japanese complete, every key the page asks for in
the table and every entry of the table used, and no component left with words of its own that
Gradio's i18n would not translate; the messages built at run time the same, in the language a
request's Accept-Language asks for first, and English, word for word, for a client that asks
for none. The page itself in each language is in test_web_language."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.i18n import I18nData
from starlette.requests import Request

from image_search.config import Settings
from image_search.ingest import SUMMARY_WORDS, IndexReport
from image_search.missing import MissingFolder
from image_search.pipeline import Failure
from image_search.query import DESCRIPTION_WORDS, Query, QueryPart, describe_filters
from image_search.search import SearchResult
from image_search.store import Filters
from image_search.web import REFUSED_MESSAGES, WebApp
from image_search.web_files import CHANGED, GONE, NOT_REGULAR, OUTSIDE
from image_search.web_inputs import AFTER_LABEL, Inputs
from image_search.web_markup import markdown_text
from image_search.web_text import (
    ENGLISH,
    JAPANESE,
    JAPANESE_DESCRIPTION_WORDS,
    JAPANESE_SUMMARY_WORDS,
    MESSAGES,
    PAGE_I18N,
    TEXTS,
    fields,
    first_language,
    label,
    language_of,
    message,
    summary_words,
    ui,
)

pytestmark = pytest.mark.fast

SOURCES = Path(__file__).resolve().parents[1] / "src" / "image_search"
UI_CALL = re.compile(r"""\bui\(\s*["']([^"']+)["']\s*\)""")
MARKER = re.compile(r'__i18n__\{"__type__": "translation_metadata", "key": "([^"]+)"\}')
# Kana and kanji: a Japanese entry that holds none was left untranslated.
JAPANESE_SCRIPT = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# What a component may show without a translation: no words, only a sample date.
NO_WORDS = re.compile(r"^[\d\s:./-]*$")
SHOWN_WORDS = ("label", "placeholder", "info", "value")
# A message key as the code names it: a quoted key of MESSAGES.
QUOTED = re.compile(r"""["']([a-z_]+)["']""")


def built_page(tmp_path: Path) -> Any:
    """The page as `serve` builds it; building needs neither the model nor the database."""
    settings = Settings(data_directory=tmp_path / "data", source_directory=tmp_path)
    web = WebApp(settings, None, None)  # type: ignore[arg-type]
    return web, web.build()


def words_shown(app: Any) -> list[tuple[str, str, str]]:
    """(component, attribute, text) for every text a component of the page shows."""
    shown = []
    for block in app.blocks.values():
        for attribute in SHOWN_WORDS:
            value = getattr(block, attribute, None)
            if isinstance(value, I18nData | str) and str(value):
                shown.append((type(block).__name__, attribute, str(value)))
    return shown


def test_every_entry_has_english_and_japanese() -> None:
    assert PAGE_I18N.translations_dict == {"en": ENGLISH, "ja": JAPANESE}
    for key, (english, japanese) in TEXTS.items():
        assert english.strip() and japanese.strip(), key
        assert JAPANESE_SCRIPT.search(japanese), f"{key}: not Japanese: {japanese!r}"
        assert not JAPANESE_SCRIPT.search(english), f"{key}: not English: {english!r}"


def test_every_key_the_code_asks_for_is_in_the_table_and_every_entry_is_used() -> None:
    asked = {key for path in SOURCES.rglob("*.py") for key in UI_CALL.findall(path.read_text())}
    assert asked - set(TEXTS) == set(), "keys asked for with no entry in web_text.TEXTS"
    assert set(TEXTS) - asked == set(), "entries of web_text.TEXTS that nothing shows"


def test_an_unknown_key_fails_when_the_page_is_built() -> None:
    with pytest.raises(KeyError, match="no page text"):
        ui("no-such-text")


def test_every_word_on_the_built_page_goes_through_the_table(tmp_path: Path) -> None:
    """Each label, placeholder, button and static text of the page is a key of the table
    (the browser shows it in its language); none is a string of its own."""
    web, app = built_page(tmp_path)
    try:
        shown = words_shown(app)
    finally:
        web.close()
    untranslated = [
        (block, attribute, text)
        for block, attribute, text in shown
        if not MARKER.fullmatch(text) and not NO_WORDS.match(text)
    ]
    assert untranslated == []
    keys = {MARKER.fullmatch(text)[1] for *_, text in shown if MARKER.fullmatch(text)}
    assert keys - set(TEXTS) == set()
    # The rest of the table is drawn by handlers (the selected result's link and words, the
    # download's label), which the test of the keys the code asks for covers.
    assert keys == set(UI_CALL.findall((SOURCES / "web_layout.py").read_text()))


def test_every_message_has_english_and_japanese_with_the_same_fields() -> None:
    for key, (english, japanese) in MESSAGES.items():
        assert english.strip() and japanese.strip(), key
        assert JAPANESE_SCRIPT.search(japanese), f"{key}: not Japanese: {japanese!r}"
        assert not JAPANESE_SCRIPT.search(english), f"{key}: not English: {english!r}"
        assert fields(english) == fields(japanese), key
        values = {name: f"<{name}>" for name in fields(english)}
        for language in ("en", "ja"):  # every field filled, nothing else asked for
            said = message(key, language, **values)
            assert all(value in said for value in values.values()), (key, language)


def test_every_message_is_used_and_every_one_used_exists() -> None:
    quoted = {key for path in SOURCES.rglob("*.py") for key in QUOTED.findall(path.read_text())}
    assert set(MESSAGES) - quoted == set(), "entries of web_text.MESSAGES that nothing says"
    asked = re.compile(r"""\b(?:message|say)\(\s*["']([a-z_]+)["']""")
    said = {key for path in SOURCES.rglob("*.py") for key in asked.findall(path.read_text())}
    assert said - set(MESSAGES) == set(), "messages asked for with no entry in MESSAGES"
    assert set(REFUSED_MESSAGES.values()) <= set(MESSAGES)


@pytest.mark.parametrize(
    ("accept_language", "language"),
    [
        ("ja-JP,ja;q=0.9,en-US;q=0.8,en;q=0.7", "ja"),  # Chromium in Japanese
        ("ja", "ja"),
        ("JA-jp", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),  # Japanese, but not first
        ("en;q=0.5, ja;q=0.8", "ja"),  # first by its weight, not by its place
        ("ja;q=0, en", "en"),  # q=0: not acceptable
        ("fr-FR,fr;q=0.9", "en"),  # a language the page does not speak: English
        ("jv", "en"),  # Javanese, not Japanese
        ("*", "en"),
        ("", "en"),
    ],
)
def test_the_first_language_a_browser_accepts_picks_the_messages(
    accept_language: str, language: str
) -> None:
    assert first_language(accept_language) == language


def request_with(headers: dict[str, str]) -> gr.Request:
    """A request as Gradio hands it to a handler, with these headers (ASGI lowercases names)."""
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return gr.Request(request=Request({"type": "http", "headers": raw}))


def test_a_request_without_accept_language_gets_english() -> None:
    assert language_of(None) == "en"
    assert language_of(request_with({})) == "en"
    assert language_of(request_with({"user-agent": "python-httpx/0.28"})) == "en"
    assert language_of(request_with({"Accept-Language": "ja-JP,ja;q=0.9"})) == "ja"


def test_the_english_messages_are_what_the_api_said_before() -> None:
    """English is what clients and the tests of other modules were told before the table:
    the status line and the refusals to serve an original, word for word."""
    status = {"images": 9, "model": "m", "dimension": 512, "table": "t"}
    assert message("status", "en", folder=Path("/photos"), **status) == (
        "**9** images indexed from `/photos` with `m` (512-d) in table `t`."
    )
    assert message("status_empty", "en", table="t", folder=Path("/photos")) == (
        "**No images are indexed yet** in table `t`. Press **Rescan** to index `/photos`, "
        "or run `image-search index`."
    )
    said_before = {
        GONE: "The original file is gone (it is still indexed).",
        OUTSIDE: "The original is not served: it lies outside source-directory (or a link "
        "leads there).",
        NOT_REGULAR: "The original is not served: it is no longer a regular file.",
        CHANGED: "The original has changed since it was indexed; press Rescan folder first.",
    }
    assert {reason: message(key, "en") for reason, key in REFUSED_MESSAGES.items()} == said_before


def test_a_field_is_named_by_its_label_in_the_language_of_the_message() -> None:
    for language, column in (("en", 0), ("ja", 1)):
        inputs = Inputs(language)
        inputs.filters(None, "2024-13-45", None, None)
        said = inputs.problems["taken_after"]
        assert said.startswith(TEXTS["taken_after"][column]), said
        assert said.startswith(label("taken_after", language))
        assert "'2024-13-45'" in said  # the value as it was typed
    assert Inputs().problems == {} and Inputs("en").language == "en"
    english = Inputs()
    english.filters(None, "2024-13-45", None, None)
    assert english.problems["taken_after"].startswith(f"{AFTER_LABEL}: expected a date")
    japanese = Inputs("ja")
    japanese.filters(None, None, None, 7)
    assert JAPANESE_SCRIPT.search(japanese.problems["min_score"])


def test_the_note_names_the_query_and_its_filters_in_the_readers_language() -> None:
    """The search's note was Japanese around English fragments ("text 'white'", "taken
    from …"): each part and filter is named in the reader's language, and in English word for
    word as the command line names them."""
    query = Query(
        text="white", more=(QueryPart("text", "red", 0.5, -1), QueryPart("like", "/p/a.jpg"))
    )
    words_only = Query(words="invoice")
    filters = Filters(
        under=("/photos/2024",), taken_after=datetime(2024, 5, 1), min_score=0.25
    )
    result = SearchResult(None, 9, [], [])
    english = WebApp._note(result, query, filters, "en")
    assert markdown_text(query.describe()) in english and describe_filters(filters) in english
    assert f"words '{words_only.words}'" in WebApp._note(result, words_only, Filters(), "en")
    japanese = WebApp._note(result, query, filters, "ja")
    japanese += WebApp._note(result, words_only, Filters(), "ja")
    for template in DESCRIPTION_WORDS.values():
        english_words = template.replace("{value}", "").strip(" ;'")
        if english_words:
            assert english_words not in japanese, english_words
    for shown in ("white", "red", "a.jpg", "/photos/2024", "2024-05-01 00:00", "0.25", "invoice"):
        assert shown in japanese
    assert set(JAPANESE_DESCRIPTION_WORDS) == set(DESCRIPTION_WORDS)
    for name, template in JAPANESE_DESCRIPTION_WORDS.items():
        assert fields(template) == fields(DESCRIPTION_WORDS[name]), name
        assert JAPANESE_SCRIPT.search(template) or name == "filter_separator", name


def every_clause_report(kept: str) -> IndexReport:
    """A run's report with every clause of the summary in it."""
    failed = [Failure("/p/a.jxl", "broken"), Failure("/p/b.jxl", "broken", remembered=True)]
    folders = [MissingFolder(f"/p/gone{n}", n) for n in range(1, 6)]
    return IndexReport(
        scanned=10, added=2, updated=1, unchanged=5, removed=3, failed=failed, dated=4,
        words_read=6, missing=15, restored=7, missing_folders=folders, missing_kept=kept,
        grace_days=30, excluded_folders=8, excluded_files=9,
    )


@pytest.mark.parametrize("kept", ["kept_by_flag", "kept_until_prune", "kept_for_days"])
def test_the_rescan_summary_is_in_the_readers_language(kept: str) -> None:
    """The Rescan's summary was English inside a Japanese sentence: each clause is in the
    reader's language, with every count, and English as the command line says it."""
    report = every_clause_report(kept)
    english, japanese = report.summary(summary_words("en")), report.summary(summary_words("ja"))
    assert english == report.summary()
    counts = ["10", "2", "1", "5", "3", "4", "6", "15", "7", "8", "9", "/p/gone1 (1)"]
    counts += ["30"] if kept == "kept_for_days" else []  # the grace period's days
    for said in (english, japanese):
        assert all(count in said for count in counts), said
        assert "and 2 more" in said or "ほか 2 個" in said
    # Only flags and keys, typed as they are, stay in Latin letters.
    typed = {"keep", "missing", "index", "prune", "exclude", "system", "folders", "gone"}
    assert set(re.findall(r"[A-Za-z]{3,}", japanese)) <= typed, japanese
    assert JAPANESE_SCRIPT.search(japanese)
    assert set(JAPANESE_SUMMARY_WORDS) == set(SUMMARY_WORDS)
    for name, template in JAPANESE_SUMMARY_WORDS.items():
        assert fields(template) == fields(SUMMARY_WORDS[name]), name
