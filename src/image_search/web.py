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
from .duplicates import DEFAULT_THRESHOLD, counted, find_duplicates
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
from .status import status_markdown, status_of
from .store import Database, Filters, Store, StoredFile
from .store.words import TableWords
from .web_files import ORIGINAL_REFUSED, FileGate, PageCache, Refused, unusable_path
from .web_inputs import (
    BUT_NOT_CANCELS,
    BUT_NOT_LABEL,
    DUPLICATE_UNDER_LABEL,
    PATH_LABEL,
    TEXT_LABEL,
    TEXT_WEIGHT_LABEL,
    THRESHOLD_LABEL,
    WORDS_LABEL,
    Inputs,
    SearchInputs,
    read_search_inputs,
)
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

log = logging.getLogger(__name__)

EMPTY_QUERY = "Drop an image or type a few words, then press **Search**."
# What Chromium, Firefox and Safari draw themselves; other query images get a preview.
BROWSER_FORMATS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "avif"})
# How often the Rescan bar is redrawn, in seconds.
RESCAN_REDRAW_S = 0.25
# How long closing the page waits for a Rescan to finish the batch under way (docker stop
# kills after 10 s); after that the database is closed and the batch is not stored.
RESCAN_STOP_S = 5.0
# ...and for its page handler to say so (one whose page was closed is never driven again).
RESCAN_ANSWER_S = 1.0
# Seconds an error toast stays; a successful search also closes any that are left.
TOAST_SECONDS = 8
# Gradio itself uses a status-code name that Starlette deprecated; nothing a user can act on.
warnings.filterwarnings(
    "ignore",
    message=".*HTTP_422_UNPROCESSABLE_ENTITY.*",
    category=StarletteDeprecationWarning,
)


def page_query(
    image: Path | None, text: str, weight: float, avoid: str, in_photos: str = ""
) -> Query:
    """The page's query: an image, a text or both, less the words `avoid` ([W:]TEXT), and the
    words `in_photos` (OCR); checked as the command line checks it (a ConfigError,
    CancelledQuery for parts that cancel)."""
    less = (text_part(avoid, -1, f"'{BUT_NOT_LABEL}'"),) if avoid else ()
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
        inputs = Inputs()
        text_query = inputs.text("text", TEXT_LABEL, text).strip()
        weight = inputs.number(
            "text_weight", TEXT_WEIGHT_LABEL, text_weight, 0, 1, DEFAULT_TEXT_WEIGHT
        )
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        avoid = inputs.text("but_not", BUT_NOT_LABEL, but_not).strip()
        in_photos = inputs.text("words", WORDS_LABEL, words).strip()
        try:
            path, shown = self.files.query_image(image)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if path is None and not text_query and not in_photos:  # a hint: nothing turns red
            return gr.skip(), gr.skip(), EMPTY_QUERY, gr.skip()
        try:
            query = page_query(path, text_query, weight, avoid, in_photos)
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
            raise page_error(f"That file cannot be used as a query image: {exc}.") from None
        preview = self.files.preview_folder(upload) / f"{Path(upload.name).stem}.jpg"
        save_jpeg(picture, preview)
        self.files.show(session_of(request), "query", [upload, preview])
        return str(self.files.previewed(preview, upload))

    def check_search(self, *values: Any) -> list[dict]:
        """The search's validator: a message next to each field that is wrong, and next to
        "…but not" when it takes away the whole query."""
        inputs = Inputs()
        image, text, top_k, text_weight, *filters, but_not, words = values
        text_query = inputs.text("text", TEXT_LABEL, text).strip()
        avoid = inputs.text("but_not", BUT_NOT_LABEL, but_not).strip()
        in_photos = inputs.text("words", WORDS_LABEL, words).strip()
        weight = inputs.number("text_weight", TEXT_WEIGHT_LABEL, text_weight, 0, 1, 0)
        read_search_inputs(inputs, top_k, self.settings.top_k, *filters, roots=self.roots)
        if avoid and not inputs.problems and (image or text_query):
            try:  # any image stands for the upload: only whether there is one counts here
                page_query(Path("upload") if image else None, text_query, weight, avoid, in_photos)
            except CancelledQuery:
                inputs.add("but_not", BUT_NOT_CANCELS)
            except ConfigError as exc:
                inputs.add("but_not", f"{BUT_NOT_LABEL}: {exc}")
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
        inputs = Inputs()
        path = inputs.path("file_path", PATH_LABEL, file_path)
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        if not path:
            raise page_error("Select a result first, then press Find similar.")
        stored = self._stored(path)
        if stored is None:
            raise page_error(f"{path} is not indexed; Find similar works on results.")
        return self._answer(Query(like=stored.file_path), shared, request)

    def check_similar(self, *values: Any) -> list[dict]:
        """Find similar's validator."""
        inputs = Inputs()
        file_path, top_k, *filters = values
        inputs.path("file_path", PATH_LABEL, file_path)
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
        store = Store(self.database, self.settings.table_name)
        searcher = Searcher(self.settings, store, self.embedder)
        try:
            result = searcher.search(query, shared.top_k, shared.filters)
        except ImageError as exc:
            raise page_error(f"That file cannot be used as a query image: {exc}.") from None
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
        return best, shown, self._note(result, shared.filters), result.to_json()

    @staticmethod
    def clear_selection() -> tuple[Any, ...]:
        """After new results: no result is selected (the panel goes with the preview)."""
        return gr.update(visible=False), "", ""

    @staticmethod
    def _note(result: SearchResult, filters: Filters) -> str:
        """What was searched, how, and where the result folder is."""
        note = f"Searched **{result.searched}** images for **{markdown_text(result.description)}**"
        if described := describe_filters(filters).replace("`", "'"):
            note += f" (`{described}`): {len(result.results)} found"
        note += "."
        if result.output_dir:
            note += f" Result folder: `{result.output_dir}`"
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
        link = self.original_link(path, session_of(request))
        return gr.update(visible=True), path, link, self.words_in(path)

    def words_in(self, file_path: str) -> str:
        """The lines of text read in an indexed file, for the selected result."""
        stored = self._stored(file_path)
        if stored is None:
            return ""
        lines = TableWords(self.database, self.settings.table_name).lines_of(stored.file_path)
        return words_shown(lines)

    def original_link(self, file_path: str, session: str | None = None) -> str:
        """A link to the original file, for indexed files only, checked now (web_files).
        Gradio serves the copy through its own file route, which sits behind the page's
        login when there is one; nothing else of the photo folder is ever served."""
        try:
            copy = self._original(file_path)
        except Refused as refused:
            self.files.show(session, "selected", [])
            return ORIGINAL_REFUSED[refused.reason]
        self.files.show(session, "selected", [copy])
        return (
            f'<a id="open-original" href="{html.escape(file_url(str(copy)))}" '
            'target="_blank" rel="noopener">Open original</a>'
        )

    def _original(self, file_path: str) -> Path:
        stored = self._stored(file_path)
        if stored is None:
            raise page_error(f"{file_path} is not indexed; only indexed files are served.")
        return self.files.original(stored)

    def duplicates(
        self, threshold: Any, under: Any, request: gr.Request | None = None
    ) -> tuple[str, str, dict]:
        """Groups of near-identical images, as thumbnails and as JSON; nothing is deleted."""
        inputs = Inputs()
        alike = inputs.number("threshold", THRESHOLD_LABEL, threshold, 0.5, 1, DEFAULT_THRESHOLD)
        folders = inputs.folders("under", DUPLICATE_UNDER_LABEL, under)
        if inputs.problems:
            raise page_error(inputs.message())
        store = Store(self.database, self.settings.table_name)
        try:
            report = find_duplicates(store, alike, build_filters(folders, roots=self.roots))
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if not report.groups:
            return f"No near-identical images at threshold {alike:g}.", "", report.to_json()
        files = sum(len(group.members) for group in report.groups)
        note = (
            f"**{counted(len(report.groups), 'group')}**, {files} files (threshold "
            f"{alike:g}). The first of each group is the one to keep (most pixels, then "
            "oldest); image-search never deletes or moves anything."
        )
        if len(report.groups) > MAX_GROUPS_SHOWN:
            note += f" Showing the first {MAX_GROUPS_SHOWN}; all are in the JSON below."
        thumbnails: list[Path] = []

        def thumbnail(processed_path: str) -> Path:
            thumbnails.append(self.files.thumbnail(processed_path))
            return thumbnails[-1]

        groups = duplicates_html(report, thumbnail)
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
        return gr.update(value=str(copy), visible=True, label=f"Download {copy.name}")

    def rescan(self) -> Iterator[tuple[str, Any]]:
        """Re-index the folder in a thread, redrawing a progress bar until it is done."""
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
                yield rescan_bar(counts["done"], counts["total"], elapsed), gr.skip()
                worker.join(RESCAN_REDRAW_S)
            if self.stopping.is_set():  # stop_rescans waits for the thread, not this handler
                yield "Rescan stopped: the server is shutting down.", gr.skip()
                return
            if "error" in finished:
                raise page_error(f"Rescan failed: {failure_line(finished['error'])}")
            yield rescan_finished(finished["report"]), self.status()
        finally:
            answered.set()

    def status(self) -> str:
        try:
            return status_markdown(
                status_of(self.settings, self.database, self.embedder.decision), self.settings
            )
        except ImageSearchError as exc:
            return f"⚠️ {exc}"

    def check_duplicates(self, threshold: Any, under: Any) -> list[dict]:
        """The Duplicates tab's validator."""
        inputs = Inputs()
        inputs.number("threshold", THRESHOLD_LABEL, threshold, 0.5, 1, DEFAULT_THRESHOLD)
        inputs.folders("under", DUPLICATE_UNDER_LABEL, under)
        return inputs.validations(self.duplicates)

    def best_shown(self, result: Any, request: gr.Request | None = None) -> tuple[str, Any]:
        """After a search or Find similar: the best match's caption and download button."""
        return best_caption(result), self.best_original(result, session_of(request))

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
