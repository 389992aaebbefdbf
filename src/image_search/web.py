"""The Gradio page's handlers. They call the same functions as the command line and nothing
of their own. The layout is in web_layout, what they draw in web_markup, the checks of what
clients send in web_inputs, the launch in web_launch, and every file the page hands out goes
through web_files."""

from __future__ import annotations

import html
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.exceptions import StarletteDeprecationWarning

from .config import Settings
from .duplicates import DEFAULT_THRESHOLD, counted, find_duplicates
from .errors import ConfigError, ImageError, ImageSearchError
from .executor_choice import executor_for
from .ingest import Progress, run_index
from .models import Embedder
from .query import DEFAULT_TEXT_WEIGHT, Query, build_filters, describe_filters, text_part
from .scan import display_path
from .search import Searcher, SearchResult, find_stored
from .status import status_markdown, status_of
from .store import Database, Filters, Store, StoredFile
from .web_files import ORIGINAL_REFUSED, FileGate, PageCache, Refused
from .web_inputs import (
    BUT_NOT_LABEL,
    DUPLICATE_UNDER_LABEL,
    PATH_LABEL,
    TEXT_LABEL,
    TEXT_WEIGHT_LABEL,
    THRESHOLD_LABEL,
    Inputs,
    SearchInputs,
    folders_of,
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
    result_records,
)

log = logging.getLogger(__name__)

EMPTY_QUERY = "Drop an image or type a few words, then press **Search**."
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
    ) -> tuple[Any, ...]:
        """An image, a text, or both together as one query, less the words `but_not`
        ([W:]TEXT); filtered. The event runs with preprocess=False: the image is the
        client's payload, read only if it was uploaded to this page (web_files), and an
        unreadable one gets our own message."""
        inputs = Inputs()
        query = inputs.text("text", TEXT_LABEL, text).strip()
        weight = inputs.number(
            "text_weight", TEXT_WEIGHT_LABEL, text_weight, 0, 1, DEFAULT_TEXT_WEIGHT
        )
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        avoid_text = inputs.text("but_not", BUT_NOT_LABEL, but_not).strip()
        try:
            path = self.files.upload(image)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if path is None and not query:  # a hint, not an error: nothing turns red
            return gr.skip(), gr.skip(), EMPTY_QUERY, gr.skip()
        try:
            avoid = (text_part(avoid_text, -1, f"'{BUT_NOT_LABEL}'"),) if avoid_text else ()
        except ConfigError as exc:
            raise page_error(str(exc)) from None
        request = Query(image=path, text=query or None, text_weight=weight, more=avoid)
        return self._answer(request, shared)

    def check_search(self, *values: Any) -> list[dict]:
        """The search's validator: a message next to each field that is wrong."""
        inputs = Inputs()
        _, text, top_k, text_weight, *filters, but_not = values
        inputs.text("text", TEXT_LABEL, text)
        inputs.text("but_not", BUT_NOT_LABEL, but_not)
        inputs.number("text_weight", TEXT_WEIGHT_LABEL, text_weight, 0, 1, 0)
        read_search_inputs(inputs, top_k, self.settings.top_k, *filters)
        return inputs.validations(self.search)

    def find_similar(
        self,
        file_path: Any,
        top_k: Any,
        under: Any = None,
        taken_after: Any = None,
        taken_before: Any = None,
        min_score: Any = None,
    ) -> tuple[Any, ...]:
        """Images like an indexed file, by its stored vector (the model is not needed)."""
        inputs = Inputs()
        path = inputs.text("file_path", PATH_LABEL, file_path).strip()
        shared = self._shared_inputs(inputs, top_k, under, taken_after, taken_before, min_score)
        if not path:
            raise page_error("Select a result first, then press Find similar.")
        stored = self._stored(path)
        if stored is None:
            raise page_error(f"{path} is not indexed; Find similar works on results.")
        return self._answer(Query(like=stored.file_path), shared)

    def check_similar(self, *values: Any) -> list[dict]:
        """Find similar's validator."""
        inputs = Inputs()
        file_path, top_k, *filters = values
        inputs.text("file_path", PATH_LABEL, file_path)
        read_search_inputs(inputs, top_k, self.settings.top_k, *filters)
        return inputs.validations(self.find_similar)

    def _shared_inputs(self, inputs: Inputs, *values: Any) -> SearchInputs:
        """Top-k and the filters, or the page's error naming every field that is wrong
        (the validator has shown them next to the fields already; this is for the API)."""
        top_k, *filters = values
        shared = read_search_inputs(inputs, top_k, self.settings.top_k, *filters)
        if inputs.problems:
            raise page_error(inputs.message())
        return shared

    def _answer(self, query: Query, shared: SearchInputs) -> tuple[Any, ...]:
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
        return best, gallery, self._note(result, shared.filters), result.to_json()

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
        store = Store(self.database, self.settings.table_name)
        try:
            image = find_stored(store, file_path)
            if image is None:
                return None
            return store.rows.stored_files_at([image.file_path]).get(image.file_path)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None

    def select_result(self, results: Any, event: gr.SelectData) -> tuple[Any, ...]:
        """A result picked in the gallery: its full path, and its original to open."""
        records = result_records(results)
        if not isinstance(event.index, int) or not 0 <= event.index < len(records):
            return gr.update(visible=False), "", ""
        path = records[event.index]["file_path"]
        return gr.update(visible=True), path, self.original_link(path)

    def original_link(self, file_path: str) -> str:
        """A link to the original file, for indexed files only, checked now (web_files).
        Gradio serves the copy through its own file route, which sits behind the page's
        login when there is one; nothing else of the photo folder is ever served."""
        try:
            copy = self._original(file_path)
        except Refused as refused:
            return ORIGINAL_REFUSED[refused.reason]
        return (
            f'<a id="open-original" href="{html.escape(file_url(str(copy)))}" '
            'target="_blank" rel="noopener">Open original</a>'
        )

    def _original(self, file_path: str) -> Path:
        stored = self._stored(file_path)
        if stored is None:
            raise page_error(f"{file_path} is not indexed; only indexed files are served.")
        return self.files.original(stored)

    def duplicates(self, threshold: Any, under: Any) -> tuple[str, str, dict]:
        """Groups of near-identical images, as thumbnails and as JSON; nothing is deleted."""
        inputs = Inputs()
        alike = inputs.number("threshold", THRESHOLD_LABEL, threshold, 0.5, 1, DEFAULT_THRESHOLD)
        folders = folders_of(inputs.text("under", DUPLICATE_UNDER_LABEL, under))
        if inputs.problems:
            raise page_error(inputs.message())
        store = Store(self.database, self.settings.table_name)
        try:
            report = find_duplicates(store, alike, build_filters(folders))
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
        return note, duplicates_html(report, self.files.thumbnail), report.to_json()

    def best_original(self, result: Any) -> Any:
        """The download button for the best match's original file (not its processed JPEG),
        checked and copied now; hidden when there is none to give."""
        hidden = gr.update(value=None, visible=False)
        records = result_records(result)
        if not records:
            return hidden
        try:
            copy = self._original(records[0]["file_path"])
        except (Refused, gr.Error):
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
            yield f"Rescan finished: {finished['report'].summary()}.", self.status()
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
        inputs.text("under", DUPLICATE_UNDER_LABEL, under)
        return inputs.validations(self.duplicates)

    def best_shown(self, result: Any) -> tuple[str, Any]:
        """After a search or Find similar: the best match's caption and download button."""
        return best_caption(result), self.best_original(result)

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
