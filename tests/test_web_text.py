"""The page's words (web_text): English and Japanese complete, every key the page asks for in
the table and every entry of the table used, and no component left with words of its own that
Gradio's i18n would not translate. The page itself in each language is in test_web_language."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from gradio.i18n import I18nData

from image_search.config import Settings
from image_search.web import WebApp
from image_search.web_text import ENGLISH, JAPANESE, PAGE_I18N, TEXTS, ui

pytestmark = pytest.mark.fast

SOURCES = Path(__file__).resolve().parents[1] / "src" / "image_search"
UI_CALL = re.compile(r"""\bui\(\s*["']([^"']+)["']\s*\)""")
MARKER = re.compile(r'__i18n__\{"__type__": "translation_metadata", "key": "([^"]+)"\}')
# Kana and kanji: a Japanese entry that holds none was left untranslated.
JAPANESE_SCRIPT = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# What a component may show without a translation: no words, only a sample date.
NO_WORDS = re.compile(r"^[\d\s:./-]*$")
SHOWN_WORDS = ("label", "placeholder", "info", "value")


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
