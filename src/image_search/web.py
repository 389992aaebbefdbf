"""The Gradio page's handlers. They call the same functions as the command line and nothing
of their own. The layout is in web_layout, what they draw in web_markup, the checks of what
clients send in web_inputs, the launch in web_launch, and every file the page hands out goes
through web_files."""

from __future__ import annotations

import html
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.exceptions import StarletteDeprecationWarning

from .config import Settings
from .duplicates import DEFAULT_THRESHOLD, find_duplicates
from .errors import ConfigError, ImageError, ImageSearchError
from .executor_choice import executor_for
from .images import ResizeSpec, prepare_file, save_jpeg
from .ingest import Progress, run_index
from .models import Embedder
from .query import (
    DEFAULT_TEXT_WEIGHT,
    CancelledQuery,
    Query,
    build_filters,
    describe_filters,
    text_part,
)
from .scan import display_path
from .search import Searcher, SearchResult, find_stored
from .status import status_of
from .store import Database, Filters, Store, StoredFile
from .store.words import TableWords
from .web_files import (
    CHANGED,
    GONE,
    NOT_REGULAR,
    OUTSIDE,
    FileGate,
    PageCache,
    Refused,
    unusable_path,
)
from .web_inputs import Inputs, SearchInputs, read_search_inputs
from .web_layout import Page, page_layout
from .web_markup import (
    MAX_GROUPS_SHOWN,
    best_caption,
    duplicates_html,
    failure_line,
    file_url,
    markdown_text,
    rescan_bar,
    rescan_finished,
    result_records,
    words_shown,
)
from .web_text import (
    ENGLISH_LANGUAGE,
    description_words,
    label,
    language_of,
    message,
    ui,
)

log = logging.getLogger(__name__)

# What Chromium, Firefox and Safari draw themselves; other query images get a preview.
BROWSER_FORMATS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "avif"})
# How often the Rescan bar is redrawn, in seconds.
RESCAN_REDRAW_S = 0.25
# How long closing the page waits for a Rescan to finish the batch under way (docker stop
# kills after 10 s); after that the database is closed and the batch is not stored.
RESCAN_STOP_S = 5.0
# ...and for its page handler to say so (one whose page was closed is never driven again).
RESCAN_ANSWER_S = 1.0
# Why an original is not served (web_files.Refused) → what the page says (web_text.MESSAGES).
REFUSED_MESSAGES = {
    GONE: "original_gone",
    OUTSIDE: "original_outside",
    NOT_REGULAR: "original_not_regular",
    CHANGED: "original_changed",
}
# Seconds an error toast stays; a successful search also closes any that are left.
TOAST_SECONDS = 8
# Gradio itself uses a status-code name that Starlette deprecated; nothing a user can act on.
warnings.filterwarnings(
    "ignore",
    message=".*HTTP_422_UNPROCESSABLE_ENTITY.*",
    category=StarletteDeprecationWarning,
)


def page_query(
    image: Path | None,
    text: str,
    weight: float,
    avoid: str,
    in_photos: str = "",
    language: str = ENGLISH_LANGUAGE,
) -> Query:
    """The page's query: an image, a text or both, less the words `avoid` ([W:]TEXT), and the
    words `in_photos` (OCR); checked as the command line checks it (a ConfigError,
    CancelledQuery for parts that cancel)."""
    less = (text_part(avoid, -1, f"'{label('but_not', language)}'"),) if avoid else ()
    query = Query(
        image=image, text=text or None, text_weight=weight, more=less, words=in_photos or None
    )
    query.check()
    return query


def needs_preview(name: str) -> bool:
    """A file a browser cannot draw (it can draw these, by their extension)."""
    return os.path.splitext(name)[1].lower().lstrip(".") not in BROWSER_FORMATS


def session_of(request: gr.Request | None) -> str | None:
    """Which page (browser tab or API client) a request came from, as Gradio tells it."""
    return getattr(request, "session_hash", None)


def page_error(message: str) -> gr.Error:
    """A message for the page, logged as one line rather than Gradio's full traceback."""
    log.warning("%s", message)
    return gr.Error(message, duration=TOAST_SECONDS, print_exception=False)


class WebApp:
    """The page's handlers, on the settings, model and database that `cli.main` built. Every
    file it hands out goes through `self.files` (web_files), made with the page (build())."""

    def __init__(self, settings: Settings, embedder: Embedder, database: Database) -> None:
        self.settings = settings
        self.embedder = embedder
        self.database = database
        self.cache: PageCache | None = None
        self._files: FileGate | None = None
        self.stopping = threading.Event()  # the page is closing: a Rescan ends between batches
        self._rescans: list[tuple[threading.Thread, threading.Event]] = []

    @property
    def roots(self) -> list[Path]:
        """The folders whose files are stored as reached through them: an `under` folder
        spelled another way (its physical path, a link) is matched in them too."""
        return [self.settings.source_directory]

    @property
    def files(self) -> FileGate:
        if self._files is None:
            raise RuntimeError("the page's file cache is made by build()")
        return self._files

    def search(
        self,
        image: Any,
        text: Any,
        top_k: Any,
        text_weight: Any = DEFAULT_TEXT_WEIGHT,
        under: Any = None,
        taken_after: Any = None,
        taken_before: Any = None,
        min_score: Any = None,
        but_not: Any = None,
        words: Any = None,
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """An image, a text, or both together as one query, less the words `but_not`
        ([W:]TEXT), and the `words` in the photos (ranked with the rest); filtered. The
        event runs with preprocess=False: the image is the client's payload, read only if it
        was uploaded to this page (web_files), and an unreadable one gets our own message."""
        language = language_of(request)
        inputs = Inputs(language)
        text_query = inputs.text("text", "text", text).strip()
        weight = inputs.number("text_weight", "text_weight", text_weight, 0, 1, DEFAULT_TEXT_WEIGHT)
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        avoid = inputs.text("but_not", "but_not", but_not).strip()
        in_photos = inputs.text("words", "words", words).strip()
        try:
            path, shown = self.files.query_image(image)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if path is None and not text_query and not in_photos:  # a hint: nothing turns red
            return gr.skip(), gr.skip(), message("empty_query", language), gr.skip()
        try:
            query = page_query(path, text_query, weight, avoid, in_photos, language)
        except ConfigError as exc:
            raise page_error(str(exc)) from None
        self.files.show(session_of(request), "query", [path, shown])
        return self._answer(query, shared, request)

    def preview(self, image: Any, request: gr.Request | None = None) -> Any:
        """An uploaded image the browser cannot show (camera RAW, HEIC, TIFF, JPEG XL) is
        shown in the query box as a JPEG made as its query image is; a search then still
        uses the upload itself. Other images are left as they are."""
        try:
            upload = self.files.upload(image)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if upload is None or not needs_preview(upload.name):
            return gr.skip()
        try:
            picture = prepare_file(upload, ResizeSpec.of(self.settings))
        except ImageError as exc:
            wrong = message("not_a_query_image", language_of(request), error=exc)
            raise page_error(wrong) from None
        preview = self.files.preview_folder(upload) / f"{Path(upload.name).stem}.jpg"
        save_jpeg(picture, preview)
        self.files.show(session_of(request), "query", [upload, preview])
        return str(self.files.previewed(preview, upload))

    def check_search(
        self,
        image: Any,
        text: Any,
        top_k: Any,
        text_weight: Any,
        under: Any,
        taken_after: Any,
        taken_before: Any,
        min_score: Any,
        but_not: Any,
        words: Any,
        request: gr.Request | None = None,
    ) -> list[dict]:
        """The search's validator: a message next to each field that is wrong, and next to
        "…but not" when it takes away the whole query. It takes the search's inputs by name
        (Gradio hands a gr.Request only to a parameter it can see)."""
        language = language_of(request)
        inputs = Inputs(language)
        text_query = inputs.text("text", "text", text).strip()
        avoid = inputs.text("but_not", "but_not", but_not).strip()
        in_photos = inputs.text("words", "words", words).strip()
        weight = inputs.number("text_weight", "text_weight", text_weight, 0, 1, 0)
        filters = (under, taken_after, taken_before, min_score)
        read_search_inputs(inputs, top_k, self.settings.top_k, *filters, roots=self.roots)
        if avoid and not inputs.problems and (image or text_query):
            image_given = Path("upload") if image else None  # only whether there is one counts
            try:
                page_query(image_given, text_query, weight, avoid, in_photos, language)
            except CancelledQuery:
                inputs.add("but_not", inputs.say("but_not_cancels", label=inputs.label("but_not")))
            except ConfigError as exc:
                inputs.add("but_not", f"{inputs.label('but_not')}: {exc}")
        return inputs.validations(self.search)

    def find_similar(
        self,
        file_path: Any,
        top_k: Any,
        under: Any = None,
        taken_after: Any = None,
        taken_before: Any = None,
        min_score: Any = None,
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Images like an indexed file, by its stored vector (the model is not needed)."""
        language = language_of(request)
        inputs = Inputs(language)
        path = inputs.path("file_path", "selected_path", file_path)
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        if not path:
            raise page_error(message("select_first", language))
        stored = self._stored(path)
        if stored is None:
            raise page_error(message("similar_not_indexed", language, path=path))
        return self._answer(Query(like=stored.file_path), shared, request)

    def check_similar(
        self,
        file_path: Any,
        top_k: Any,
        under: Any,
        taken_after: Any,
        taken_before: Any,
        min_score: Any,
        request: gr.Request | None = None,
    ) -> list[dict]:
        """Find similar's validator."""
        inputs = Inputs(language_of(request))
        inputs.path("file_path", "selected_path", file_path)
        filters = (under, taken_after, taken_before, min_score)
        read_search_inputs(inputs, top_k, self.settings.top_k, *filters, roots=self.roots)
        return inputs.validations(self.find_similar)

    def _shared_inputs(self, inputs: Inputs, *values: Any) -> SearchInputs:
        """Top-k and the filters, or the page's error naming every field that is wrong
        (the validator has shown them next to the fields already; this is for the API)."""
        top_k, *filters = values
        shared = read_search_inputs(inputs, top_k, self.settings.top_k, *filters, roots=self.roots)
        if inputs.problems:
            raise page_error(inputs.message())
        return shared

    def _answer(
        self, query: Query, shared: SearchInputs, request: gr.Request | None
    ) -> tuple[Any, ...]:
        language = language_of(request)
        store = Store(self.database, self.settings.table_name)
        searcher = Searcher(self.settings, store, self.embedder)
        try:
            result = searcher.search(query, shared.top_k, shared.filters)
        except ImageError as exc:
            raise page_error(message("not_a_query_image", language, error=exc)) from None
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        best = self.files.thumbnail(result.results[0].processed_path) if result.results else None
        gallery = [
            (self.files.thumbnail(m.processed_path), f"{m.score:.3f} · {display_path(m.file_name)}")
            for m in result.results
        ]
        self.files.show(session_of(request), "results", [best, *(g for g, _ in gallery)])
        # New results close the gallery's preview: it would show another picture at the
        # index selected before, while the panel still names the old one.
        shown = gr.Gallery(value=gallery, selected_index=None)
        note = self._note(result, query, shared.filters, language)
        return best, shown, note, result.to_json()

    @staticmethod
    def clear_selection() -> tuple[Any, ...]:
        """After new results: no result is selected (the panel goes with the preview)."""
        return gr.update(visible=False), "", ""

    @staticmethod
    def _note(
        result: SearchResult, query: Query, filters: Filters, language: str = ENGLISH_LANGUAGE
    ) -> str:
        """What was searched, how, and where the result folder is, in the reader's language."""
        words = description_words(language)
        searched = {"count": result.searched, "description": markdown_text(query.describe(words))}
        if described := describe_filters(filters, words).replace("`", "'"):
            found = len(result.results)
            note = message(
                "searched_filtered", language, filters=described, found=found, **searched
            )
        else:
            note = message("searched", language, **searched)
        if result.output_dir:
            note += message("result_folder", language, folder=result.output_dir)
        for warning in result.warnings:
            note += f"\n\n⚠️ {warning}"
        return note

    def _stored(self, file_path: str) -> StoredFile | None:
        """An indexed file's row (size, mtime and content hash as indexed), found as
        `--like` finds it: as given, absolute, or with links resolved."""
        if unusable_path(file_path):  # a client's text: no file of ours has such a name
            return None
        store = Store(self.database, self.settings.table_name)
        try:
            image = find_stored(store, file_path)
            if image is None:
                return None
            return store.rows.stored_files_at([image.file_path]).get(image.file_path)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None

    def select_result(
        self, results: Any, event: gr.SelectData, request: gr.Request | None = None
    ) -> tuple[Any, ...]:
        """A result picked in the gallery: its full path, its original to open, and the
        text read in it."""
        records = result_records(results)
        if not isinstance(event.index, int) or not 0 <= event.index < len(records):
            return gr.update(visible=False), "", "", ""
        path = records[event.index]["file_path"]
        stored = self._stored(path)  # once: the link and the words are of the same row
        link = self._link_to(stored, path, session_of(request), language_of(request))
        return gr.update(visible=True), path, link, self._words_in(stored)

    def _words_in(self, stored: StoredFile | None) -> str:
        """The lines of text read in an indexed file, for the selected result."""
        if stored is None:
            return ""
        lines = TableWords(self.database, self.settings.table_name).lines_of(stored.file_path)
        return words_shown(lines)

    def original_link(
        self, file_path: str, session: str | None = None, language: str = ENGLISH_LANGUAGE
    ) -> str:
        """A link to the original file, for indexed files only, checked now (web_files).
        Gradio serves the copy through its own file route, which sits behind the page's
        login when there is one; nothing else of the photo folder is ever served."""
        return self._link_to(self._stored(file_path), file_path, session, language)

    def _link_to(
        self, stored: StoredFile | None, file_path: str, session: str | None, language: str
    ) -> str:
        try:
            copy = self._original_of(stored, file_path, language)
        except Refused as refused:
            self.files.show(session, "selected", [])
            return message(REFUSED_MESSAGES[refused.reason], language)
        self.files.show(session, "selected", [copy])
        return (
            f'<a id="open-original" href="{html.escape(file_url(str(copy)))}" '
            f'target="_blank" rel="noopener">{ui("open_original")}</a>'
        )

    def _original(self, file_path: str, language: str = ENGLISH_LANGUAGE) -> Path:
        return self._original_of(self._stored(file_path), file_path, language)

    def _original_of(self, stored: StoredFile | None, file_path: str, language: str) -> Path:
        if stored is None:
            raise page_error(message("served_not_indexed", language, path=file_path))
        return self.files.original(stored)

    def duplicates(
        self, threshold: Any, under: Any, request: gr.Request | None = None
    ) -> tuple[str, str, dict]:
        """Groups of near-identical images, as thumbnails and as JSON; nothing is deleted."""
        language = language_of(request)
        inputs = Inputs(language)
        alike = inputs.number("threshold", "threshold", threshold, 0.5, 1, DEFAULT_THRESHOLD)
        folders = inputs.folders("under", "duplicate_under", under)
        if inputs.problems:
            raise page_error(inputs.message())
        store = Store(self.database, self.settings.table_name)
        try:
            report = find_duplicates(store, alike, build_filters(folders, roots=self.roots))
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if not report.groups:
            none = message("duplicates_none", language, threshold=f"{alike:g}")
            return none, "", report.to_json()
        count = len(report.groups)
        groups_found = message("one_group" if count == 1 else "groups", language, count=count)
        files = sum(len(group.members) for group in report.groups)
        note = message(
            "duplicates_found", language, groups=groups_found, files=files, threshold=f"{alike:g}"
        )
        if len(report.groups) > MAX_GROUPS_SHOWN:
            note += message("duplicates_more", language, shown=MAX_GROUPS_SHOWN)
        thumbnails: list[Path] = []

        def thumbnail(processed_path: str) -> Path:
            thumbnails.append(self.files.thumbnail(processed_path))
            return thumbnails[-1]

        groups = duplicates_html(report, thumbnail, language)
        self.files.show(session_of(request), "duplicates", thumbnails)
        return note, groups, report.to_json()

    def best_original(self, result: Any, session: str | None = None) -> Any:
        """The download button for the best match's original file (not its processed JPEG),
        checked and copied now; hidden when there is none to give."""
        hidden = gr.update(value=None, visible=False)
        records = result_records(result)
        copy = None
        with suppress(Refused, gr.Error):
            copy = self._original(records[0]["file_path"]) if records else None
        self.files.show(session, "download", [copy])
        if copy is None:
            return hidden
        return gr.update(value=str(copy), visible=True, label=f"{ui('download')} {copy.name}")

    def rescan(self, request: gr.Request | None = None) -> Iterator[tuple[str, Any]]:
        """Re-index the folder in a thread, redrawing a progress bar until it is done."""
        language = language_of(request)
        counts = {"done": 0, "total": 0}
        finished: dict[str, Any] = {}

        def report(done: int, total: int) -> None:
            counts.update(done=done, total=total)

        def work() -> None:
            progress = Progress(callback=report, stop=self.stopping)
            try:
                finished["report"] = run_index(
                    self.settings,
                    self.embedder,
                    self.database,
                    progress=progress,
                    executor=executor_for(self.settings),
                )
            except Exception as exc:  # any failure reaches the page as one line
                finished["error"] = exc

        started = time.monotonic()
        worker = threading.Thread(target=work, name="rescan", daemon=True)
        answered = threading.Event()  # the page has had the Rescan's last word
        self._rescans = [r for r in self._rescans if r[0].is_alive()] + [(worker, answered)]
        worker.start()
        try:
            while worker.is_alive() and not self.stopping.is_set():
                elapsed = time.monotonic() - started
                yield rescan_bar(counts["done"], counts["total"], elapsed, language), gr.skip()
                worker.join(RESCAN_REDRAW_S)
            if self.stopping.is_set():  # stop_rescans waits for the thread, not this handler
                yield message("rescan_stopped", language), gr.skip()
                return
            if "error" in finished:
                error = failure_line(finished["error"])
                raise page_error(message("rescan_failed", language, error=error))
            yield rescan_finished(finished["report"], language), self.status(request)
        finally:
            answered.set()

    def status(self, request: gr.Request | None = None) -> str:
        """The line at the top of the page: what is indexed, from where, with which model
        (in English as the page said it before it spoke Japanese)."""
        language = language_of(request)
        try:
            status = status_of(self.settings, self.database, self.embedder.decision)
        except ImageSearchError as exc:
            return message("status_failed", language, error=exc)
        folder, table = self.settings.source_directory, status["table"]
        if not status["images"]:
            return message("status_empty", language, table=table, folder=folder)
        return message(
            "status",
            language,
            images=status["images"],
            folder=folder,
            model=status["model"],
            dimension=status["dimension"],
            table=table,
        )

    def check_duplicates(
        self, threshold: Any, under: Any, request: gr.Request | None = None
    ) -> list[dict]:
        """The Duplicates tab's validator."""
        inputs = Inputs(language_of(request))
        inputs.number("threshold", "threshold", threshold, 0.5, 1, DEFAULT_THRESHOLD)
        inputs.folders("under", "duplicate_under", under)
        return inputs.validations(self.duplicates)

    def best_shown(self, result: Any, request: gr.Request | None = None) -> tuple[str, Any]:
        """After a search or Find similar: the best match's caption and download button."""
        caption = best_caption(result, language_of(request))
        return caption, self.best_original(result, session_of(request))

    def page_closed(self, request: gr.Request) -> None:
        """A browser closed the page: the files it showed may leave the cache."""
        self.files.closed(session_of(request))

    def build(self) -> Page:
        """The page. Its cache is made first: Gradio reads where it is (GRADIO_TEMP_DIR) when
        the blocks are made."""
        self.close()
        self.cache = PageCache(self.settings.data_directory)
        self._files = FileGate(self.settings, self.cache)
        return page_layout(self)

    def stop_rescans(self) -> None:
        """Ask a running Rescan to end at its next batch boundary and wait a little for it,
        so that it is over before the database closes (and the interpreter with it), and for
        its page handler, so that the page hears of it and Gradio closes without waiting."""
        self.stopping.set()
        deadline = time.monotonic() + RESCAN_STOP_S
        for worker, answered in [r for r in self._rescans if r[0].is_alive()]:
            worker.join(max(0.0, deadline - time.monotonic()))
            answered.wait(RESCAN_ANSWER_S)
            if worker.is_alive():
                log.warning(
                    "the Rescan's current batch did not finish within %g s; stopping without it",
                    RESCAN_STOP_S,
                )

    def close(self) -> None:
        """Delete the page's cache (uploads and copies): nothing private stays behind."""
        if self.cache is not None:
            self.cache.remove()
