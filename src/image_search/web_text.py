"""The page's words in every language it speaks, two tables. TEXTS holds what the page is
built with: Gradio's i18n picks the browser's language in the browser itself (English where it
has no match), and the page's components carry keys (`ui("search")`), never the words.
MESSAGES holds what handlers build at run time with values in them (the status line, a
search's note, errors next to a field or in a toast, the Rescan bar): Gradio's i18n translates
a key, not a sentence with values, so these are picked on the server from the request's
Accept-Language (`language_of`). A client that asks for no language (a script, the API) gets
English, word for word as before."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import gradio as gr
from gradio.i18n import I18nData

from .ingest import SUMMARY_WORDS
from .query import DESCRIPTION_WORDS

ENGLISH_LANGUAGE, JAPANESE_LANGUAGE = "en", "ja"
LANGUAGES = (ENGLISH_LANGUAGE, JAPANESE_LANGUAGE)  # in the order of each table's columns

# key → (English, Japanese). A field's label in either language is also what the messages
# about it name it by (web_inputs), so that a message and the field it points at read the same.
TEXTS: dict[str, tuple[str, str]] = {
    "intro": (
        "# image-search\nDrop in a photo to find the most similar ones you have.",
        "# image-search\n写真を 1 枚ドロップすると、お手持ちの写真の中から似ているものを探します。",
    ),
    "search_tab": ("Search", "検索"),
    "duplicates_tab": ("Duplicates", "重複"),
    "query_image": ("Query image", "検索したい画像"),
    "text": ("…or describe it in words", "…または言葉で説明"),
    "text_placeholder": ("a red apple on a table", "テーブルの上の赤いりんご"),
    "but_not": ("…but not", "…ただし、これは除く"),
    "but_not_placeholder": ("people (or 0.5:people)", "人物（または 0.5:人物）"),
    "words": ("Words in the photo", "写真に写っている文字"),
    "words_placeholder": (
        "invoice 2023 (text read in the photos)",
        "請求書 2023（写真から読み取った文字で探します）",
    ),
    "text_weight": (
        "Weight of the words when an image is given too",
        "画像と一緒に使うときの、言葉の重み",
    ),
    "top_k": ("How many results (top-k)", "表示する件数（top-k）"),
    "search": ("Search", "検索"),
    "rescan": ("Rescan folder", "フォルダを再スキャン"),
    "best_match": ("Best match", "いちばん似ている画像"),
    "download_original": ("Download original", "元のファイルをダウンロード"),
    "download": ("Download", "ダウンロード:"),
    "ranked_results": ("Ranked results", "検索結果（似ている順）"),
    "results_json": ("Ranked results as JSON", "検索結果（JSON）"),
    "filters": ("Filters", "絞り込み"),
    "under": (
        "Only files under these folders (one per line)",
        "このフォルダ内のファイルだけ（1 行に 1 フォルダ）",
    ),
    "taken_after": ("Taken on or after", "撮影日（この日以降）"),
    "taken_before": ("Taken before", "撮影日（この日より前）"),
    "min_score": ("Lowest score (0: any)", "スコアの下限（0 なら制限なし）"),
    "selected_path": ("Selected result: full path", "選んだ結果のフルパス"),
    "find_similar": ("Find similar", "似た画像を探す"),
    "open_original": ("Open original", "元のファイルを開く"),
    "selected_words": ("Text found in this photo", "この写真から読み取った文字"),
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
    "threshold": (
        "How alike (cosine similarity)",
        "どこまで似ていれば重複とみなすか（コサイン類似度）",
    ),
    "duplicate_under": (
        "Only under these folders (one per line)",
        "このフォルダ内だけ（1 行に 1 フォルダ）",
    ),
    "find_duplicates": ("Find duplicates", "重複を探す"),
    "groups_json": ("Groups as JSON", "グループ（JSON）"),
}

# key → (English, Japanese) templates of str.format, with the same named {fields} in both; the
# values (paths, numbers, file names, an error of another stage) go in as they are.
MESSAGES: dict[str, tuple[str, str]] = {
    "status": (
        "**{images}** images indexed from `{folder}` with `{model}` ({dimension}-d) in table "
        "`{table}`.",
        "`{folder}` の画像 **{images}** 枚を `{model}`（{dimension} 次元）で索引済みです"
        "（テーブル `{table}`）。",
    ),
    "status_empty": (
        "**No images are indexed yet** in table `{table}`. Press **Rescan** to index "
        "`{folder}`, or run `image-search index`.",
        "テーブル `{table}` には**まだ画像が索引されていません**。**フォルダを再スキャン** を"
        "押して `{folder}` を索引に加えるか、`image-search index` を実行してください。",
    ),
    "status_failed": ("⚠️ {error}", "⚠️ 状態を読めませんでした：{error}"),
    "empty_query": (
        "Drop an image or type a few words, then press **Search**.",
        "画像をドロップするか言葉を入力して、**検索** を押してください。",
    ),
    "searched": (
        "Searched **{count}** images for **{description}**.",
        "**{count}** 枚の画像から **{description}** を検索しました。",
    ),
    "searched_filtered": (
        "Searched **{count}** images for **{description}** (`{filters}`): {found} found.",
        "**{count}** 枚の画像から **{description}** を検索しました（`{filters}`）："
        "{found} 件見つかりました。",
    ),
    "result_folder": (" Result folder: `{folder}`", " 結果フォルダ：`{folder}`"),
    "score": (" · score {score}", " · スコア {score}"),
    "not_a_query_image": (
        "That file cannot be used as a query image: {error}.",
        "そのファイルは検索する画像として使えません：{error}。",
    ),
    "select_first": (
        "Select a result first, then press Find similar.",
        "先に結果を 1 つ選んでから、「似た画像を探す」を押してください。",
    ),
    "similar_not_indexed": (
        "{path} is not indexed; Find similar works on results.",
        "{path} は索引にありません。「似た画像を探す」は検索結果に使えます。",
    ),
    "served_not_indexed": (
        "{path} is not indexed; only indexed files are served.",
        "{path} は索引にありません。開けるのは索引にあるファイルだけです。",
    ),
    "original_gone": (
        "The original file is gone (it is still indexed).",
        "元のファイルがなくなっています（索引にはまだあります）。",
    ),
    "original_outside": (
        "The original is not served: it lies outside source-directory (or a link leads there).",
        "元のファイルは開けません：source-directory の外にあります（またはリンクがその外を"
        "指しています）。",
    ),
    "original_not_regular": (
        "The original is not served: it is no longer a regular file.",
        "元のファイルは開けません：通常のファイルではなくなっています。",
    ),
    "original_changed": (
        "The original has changed since it was indexed; press Rescan folder first.",
        "元のファイルは索引を作った後に変更されています。先に「フォルダを再スキャン」を"
        "押してください。",
    ),
    "expected_text": (
        "{label}: expected text, got {value}",
        "{label}：文字を入力してください（受け取った値：{value}）",
    ),
    "expected_number": (
        "{label}: expected a number from {low} to {high}, got {value}",
        "{label}：{low} から {high} までの数を入力してください（受け取った値：{value}）",
    ),
    "unusable_path": (
        "{label}: not a usable path ({why})",
        "{label}：使えるパスではありません（{why}）",
    ),
    "no_such_folder": (
        "{label}: no such folder: {folder}",
        "{label}：そのフォルダはありません：{folder}",
    ),
    "expected_date": (  # what query.parse_date says
        "{label}: expected a date like 2024-05-31 (or 2024, 2024-05, 2024-05-31T18:30), "
        "got {value}",
        "{label}：2024-05-31 のような日付を入力してください（2024、2024-05、"
        "2024-05-31T18:30 の形も使えます）。受け取った値：{value}",
    ),
    "no_such_date": (
        "{label}: expected a date like 2024-05-31, got {value}",
        "{label}：2024-05-31 のような、実在する日付を入力してください。受け取った値：{value}",
    ),
    "before_not_after": (
        "{before}: must be later than {after} ({start}); no photo can match both",
        "{before}：{after}（{start}）より後の日時にしてください。両方に当てはまる写真は"
        "ありません",
    ),
    "but_not_cancels": (
        "{label}: takes away all that the query asks for (the same words as the text, with "
        "the same weight): change the words, or give them a smaller weight (0.5:…)",
        "{label}：検索の内容をすべて打ち消してしまいます（言葉と同じ語が同じ重みで指定されて"
        "います）。語を変えるか、小さい重みを付けてください（0.5:…）",
    ),
    "duplicates_none": (
        "No near-identical images at threshold {threshold}.",
        "しきい値 {threshold} では、ほとんど同じ画像は見つかりませんでした。",
    ),
    "one_group": ("{count} group", "{count} グループ"),
    "groups": ("{count} groups", "{count} グループ"),
    "duplicates_found": (
        "**{groups}**, {files} files (threshold {threshold}). The first of each group is the "
        "one to keep (most pixels, then oldest); image-search never deletes or moves anything.",
        "**{groups}**、{files} 個のファイル（しきい値 {threshold}）。各グループの最初の 1 枚が"
        "残すもの（画素数が最も多く、同じなら最も古いもの）です。image-search がファイルを"
        "削除したり移動したりすることはありません。",
    ),
    "duplicates_more": (
        " Showing the first {shown}; all are in the JSON below.",
        " 最初の {shown} グループを表示しています。すべては下の JSON にあります。",
    ),
    "group": ("Group {number}", "グループ {number}"),
    "keep": ("keep", "残す"),
    "rescan_scanning": ("Scanning the folder…", "フォルダを調べています…"),
    "minutes_left": (" · about {minutes} min left", " · 残り約 {minutes} 分"),
    "seconds_left": (" · about {seconds} s left", " · 残り約 {seconds} 秒"),
    "rescan_finished": ("Rescan finished: {summary}.", "再スキャンが終わりました：{summary}。"),
    "skipped_more": (
        "… and {count} more (image-search index --json lists them all)",
        "…ほか {count} 件（image-search index --json ですべて表示できます）",
    ),
    "rescan_stopped": (
        "Rescan stopped: the server is shutting down.",
        "再スキャンを中止しました：サーバーが終了します。",
    ),
    "rescan_failed": ("Rescan failed: {error}", "再スキャンに失敗しました：{error}"),
}

# How the note names a query's parts and filters in Japanese; English is query.py's own.
JAPANESE_DESCRIPTION_WORDS: dict[str, str] = {
    "image": "画像",
    "text": "言葉「{value}」",
    "like": "{value} に似た画像",
    "words": "写真の文字「{value}」",
    "under": "フォルダ {value} 内",
    "taken_after": "撮影日 {value} 以降",
    "taken_before": "撮影日 {value} より前",
    "min_score": "スコア {value} 以上",
    "filter_separator": "、",
}

# A Rescan's summary in Japanese; English is ingest.py's own, as the command line says it.
# Flags and keys (--keep-missing, exclude) stay as they are typed.
JAPANESE_SUMMARY_WORDS: dict[str, str] = {
    "counts": "確認 {scanned} 件、追加 {added} 件、更新 {updated} 件、変更なし {unchanged} 件、"
    "削除 {removed} 件、スキップ {skipped} 件",
    "remembered": "（うち {count} 件は前に失敗してから変更がないため、読み直していません）",
    "restored": "。見つからなかったファイル {count} 件が戻りました",
    "missing": "。見つからないファイル {count} 件は検索の対象から外しています（{kept}）",
    "kept_by_flag": "--keep-missing により保持",
    "kept_until_prune": "画像が 1 枚も見つからなかったため、index --prune まで保持",
    "kept_for_days": "見つからないまま {days} 日たつと削除。index --prune ですぐに削除できます",
    "missing_folders": "。見つからないフォルダ：{folders}",
    "more_folders": " ほか {count} 個",
    "excluded": "。フォルダ {folders} 個と画像 {files} 枚を除外しました"
    "（exclude、exclude-system-folders）",
    "dated": "。保存済みの画像 {count} 枚に撮影日時を補いました",
    "words_read": "。保存済みの画像 {count} 枚の文字を読み取りました",
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


def label(key: str, language: str) -> str:
    """The page's words for `key` in `language` ("en" or "ja"), as a message names a field."""
    return TEXTS[key][LANGUAGES.index(language)]


def message(key: str, language: str, **values: Any) -> str:
    """The message `key` in `language` ("en" or "ja") with `values` put in as they are."""
    return MESSAGES[key][LANGUAGES.index(language)].format(**values)


def description_words(language: str) -> Mapping[str, str]:
    """The words that name a query's parts and filters in `language` (see query.describe)."""
    return JAPANESE_DESCRIPTION_WORDS if language == JAPANESE_LANGUAGE else DESCRIPTION_WORDS


def summary_words(language: str) -> Mapping[str, str]:
    """The words of an index run's summary in `language` (see IndexReport.summary)."""
    return JAPANESE_SUMMARY_WORDS if language == JAPANESE_LANGUAGE else SUMMARY_WORDS


def fields(template: str) -> set[str]:
    """The named {fields} of a message template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def first_language(accept_language: str) -> str:
    """"ja" when the language a browser accepts first (its highest q, the first of equals) is
    Japanese, else "en"."""
    best, best_q = "", 0.0
    for item in accept_language.split(","):
        tag, *parameters = (part.strip() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > best_q:
            best, best_q = tag, q
    primary = best.lower().split("-")[0]
    return JAPANESE_LANGUAGE if primary == JAPANESE_LANGUAGE else ENGLISH_LANGUAGE


def language_of(request: gr.Request | None) -> str:
    """The language of a request's messages, by its Accept-Language; English without one (an
    API client, a handler called directly)."""
    headers = getattr(request, "headers", None) if request is not None else None
    return first_language(headers.get("accept-language", "") if headers else "")
