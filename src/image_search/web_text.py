"""The page's words in every language it speaks, one table. Gradio's i18n picks the browser's
language in the browser itself (English where it has no match): the page's components carry
keys (`ui("search")`), never the words. Messages built at run time with values in them (errors,
the note on a search, the status line) and whatever the API returns stay English, since
Gradio's i18n translates a key, not a sentence with values, and a script must not be handed a
key in place of its text."""

from __future__ import annotations

import gradio as gr
from gradio.i18n import I18nData

from .web_inputs import (
    AFTER_LABEL,
    BEFORE_LABEL,
    BUT_NOT_LABEL,
    DUPLICATE_UNDER_LABEL,
    MIN_SCORE_LABEL,
    PATH_LABEL,
    SELECTED_WORDS_LABEL,
    TEXT_LABEL,
    TEXT_WEIGHT_LABEL,
    THRESHOLD_LABEL,
    TOP_K_LABEL,
    UNDER_LABEL,
    WORDS_LABEL,
)

# key → (English, Japanese). The English of a field is the label its messages name it by
# (web_inputs), so that a message and the field it points at read the same.
TEXTS: dict[str, tuple[str, str]] = {
    "intro": (
        "# image-search\nDrop in a photo to find the most similar ones you have.",
        "# image-search\n写真を 1 枚ドロップすると、お手持ちの写真の中から似ているものを探します。",
    ),
    "search_tab": ("Search", "検索"),
    "duplicates_tab": ("Duplicates", "重複"),
    "query_image": ("Query image", "検索したい画像"),
    "text": (TEXT_LABEL, "…または言葉で説明"),
    "text_placeholder": ("a red apple on a table", "テーブルの上の赤いりんご"),
    "but_not": (BUT_NOT_LABEL, "…ただし、これは除く"),
    "but_not_placeholder": ("people (or 0.5:people)", "人物（または 0.5:人物）"),
    "words": (WORDS_LABEL, "写真に写っている文字"),
    "words_placeholder": (
        "invoice 2023 (text read in the photos)",
        "請求書 2023（写真から読み取った文字で探します）",
    ),
    "text_weight": (TEXT_WEIGHT_LABEL, "画像と一緒に使うときの、言葉の重み"),
    "top_k": (TOP_K_LABEL, "表示する件数（top-k）"),
    "search": ("Search", "検索"),
    "rescan": ("Rescan folder", "フォルダを再スキャン"),
    "best_match": ("Best match", "いちばん似ている画像"),
    "download_original": ("Download original", "元のファイルをダウンロード"),
    "download": ("Download", "ダウンロード:"),
    "ranked_results": ("Ranked results", "検索結果（似ている順）"),
    "results_json": ("Ranked results as JSON", "検索結果（JSON）"),
    "filters": ("Filters", "絞り込み"),
    "under": (UNDER_LABEL, "このフォルダ内のファイルだけ（1 行に 1 フォルダ）"),
    "taken_after": (AFTER_LABEL, "撮影日（この日以降）"),
    "taken_before": (BEFORE_LABEL, "撮影日（この日より前）"),
    "min_score": (MIN_SCORE_LABEL, "スコアの下限（0 なら制限なし）"),
    "selected_path": (PATH_LABEL, "選んだ結果のフルパス"),
    "find_similar": ("Find similar", "似た画像を探す"),
    "open_original": ("Open original", "元のファイルを開く"),
    "selected_words": (SELECTED_WORDS_LABEL, "この写真から読み取った文字"),
    "words_not_read": (
        "(its words have not been read: the ocr key is off, or an index run is due)",
        "（まだ文字を読み取っていません。設定キー ocr がオフか、index の実行待ちです）",
    ),
    "no_words_found": (
        "(no text found in this photo)",
        "（この写真には文字が見つかりませんでした）",
    ),
    "duplicates_intro": (
        "Groups of near-identical images: copies, resized or re-encoded copies, burst "
        "shots. Nothing is ever deleted or moved.",
        "ほとんど同じ画像をグループにまとめます（コピー、サイズ変更や再圧縮したコピー、"
        "連写など）。ファイルを削除したり移動したりすることはありません。",
    ),
    "threshold": (THRESHOLD_LABEL, "どこまで似ていれば重複とみなすか（コサイン類似度）"),
    "duplicate_under": (DUPLICATE_UNDER_LABEL, "このフォルダ内だけ（1 行に 1 フォルダ）"),
    "find_duplicates": ("Find duplicates", "重複を探す"),
    "groups_json": ("Groups as JSON", "グループ（JSON）"),
}

ENGLISH = {key: english for key, (english, _) in TEXTS.items()}
JAPANESE = {key: japanese for key, (_, japanese) in TEXTS.items()}
PAGE_I18N = gr.I18n(en=ENGLISH, ja=JAPANESE)


def ui(key: str) -> I18nData:
    """The page's words for `key`, in the browser's language; an unknown key fails here,
    when the page is built, rather than showing the key."""
    if key not in TEXTS:
        raise KeyError(f"no page text {key!r} in web_text.TEXTS")
    return PAGE_I18N(key)
