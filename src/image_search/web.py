"""The Gradio page. It calls the same functions as the command line and nothing of its own."""

from __future__ import annotations

import html
import ipaddress
import logging
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
from starlette.exceptions import StarletteDeprecationWarning

from .config import Settings
from .duplicates import DEFAULT_THRESHOLD, DuplicateReport, counted, find_duplicates
from .errors import ConfigError, ImageError, ImageSearchError
from .ingest import Progress, run_index
from .models import Embedder
from .scan import display_path
from .search import (
    DEFAULT_TEXT_WEIGHT,
    Query,
    Searcher,
    SearchResult,
    build_filters,
    describe_filters,
    text_part,
)
from .status import status_markdown, status_of
from .store import Database, Filters, Store

log = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"
MAX_TOP_K = 100
EMPTY_QUERY = "Drop an image or type a few words, then press **Search**."
# How often the Rescan bar is redrawn, in seconds.
RESCAN_REDRAW_S = 0.25
# Seconds an error toast stays; a successful search also closes any that are left.
TOAST_SECONDS = 8
# Runs in the browser before the handler it is attached to, and hands the input on.
CLOSE_TOASTS = (
    "(value) => { document.querySelectorAll('.toast-close').forEach((b) => b.click()); "
    "return value; }"
)
# Gradio itself uses a status-code name that Starlette deprecated; nothing a user can act on.
warnings.filterwarnings(
    "ignore",
    message=".*HTTP_422_UNPROCESSABLE_ENTITY.*",
    category=StarletteDeprecationWarning,
)
# Duplicate groups drawn on the page at most (all of them are in the JSON below).
MAX_GROUPS_SHOWN = 200
# Gradio lays gallery captions over the image, cut to one line ("astronaut.j…"): put them
# under the image instead, whole, wrapped where they need it.
PAGE_CSS = """
#gallery .thumbnail-item { display: flex; flex-direction: column; aspect-ratio: auto; }
#gallery .thumbnail-item > img { aspect-ratio: 4 / 3; height: auto; min-height: 0; }
#gallery .caption-label {
  position: static; max-width: 100%; opacity: 1; white-space: normal; overflow-wrap: anywhere;
  text-overflow: clip; border: 0; border-top: 1px solid var(--border-color-primary);
  border-radius: 0;
}
#duplicate-groups .group { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 18px; }
#duplicate-groups figure { margin: 0; width: 180px; }
#duplicate-groups img { width: 180px; height: 135px; object-fit: contain; background: #8881; }
#duplicate-groups figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
"""


def page_error(message: str) -> gr.Error:
    """A message for the page, logged as one line rather than Gradio's full traceback."""
    log.warning("%s", message)
    return gr.Error(message, duration=TOAST_SECONDS, print_exception=False)


def uploaded_path(payload: Any) -> Path | None:
    """The server-side path of an uploaded image (the event runs with preprocess=False,
    so that an unreadable upload reaches our own error message, not Gradio's)."""
    if not payload:
        return None
    if isinstance(payload, dict):
        path = payload.get("path")
        return Path(path) if path else None
    return Path(str(payload))


def markdown_text(text: str) -> str:
    """User text shown inside Markdown as typed, not as formatting."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~])", r"\\\1", text)


def folders_of(text: str | None) -> list[str]:
    """Folders typed one per line (a folder name may hold any other character)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def page_filters(
    under: str | None, taken_after: str | None, taken_before: str | None, min_score: float | None
) -> Filters:
    """The page's filter controls as Filters; a minimum score of 0 means none."""
    return build_filters(
        folders_of(under),
        (taken_after or "").strip() or None,
        (taken_before or "").strip() or None,
        float(min_score) if min_score else None,
        prefix="",
    )


def file_url(path: str) -> str:
    """The page's address of a file Gradio may serve (behind the page's login, if any)."""
    return "gradio_api/file=" + quote(path)


def duplicates_html(report: DuplicateReport) -> str:
    """Each group as a row of thumbnails (the processed JPEGs) with score and full path."""
    parts = []
    for number, group in enumerate(report.groups[:MAX_GROUPS_SHOWN], start=1):
        figures = []
        for position, member in enumerate(group.members):
            label = "keep" if position == 0 else f"{member.score:.3f}"
            path = html.escape(display_path(member.image.file_path))
            figures.append(
                f'<figure><img src="{html.escape(file_url(member.image.processed_path))}" '
                f'alt="{path}" loading="lazy"><figcaption><b>{label}</b> {path}</figcaption>'
                "</figure>"
            )
        parts.append(
            f'<h4>Group {number}</h4><div class="group">{"".join(figures)}</div>'
        )
    return "".join(parts)


def gallery_of(result: SearchResult) -> list[tuple[str, str]]:
    return [
        (m.processed_path, f"{m.score:.3f} · {display_path(m.file_name)}") for m in result.results
    ]


def best_caption(result: dict[str, Any] | None) -> str:
    """File name, score and full path of the best match, from the search's JSON."""
    if not result or not result.get("results"):
        return ""
    best = result["results"][0]
    return f"**{best['file_name']}** · score {best['score']:.3f}  \n`{best['file_path']}`"


def rescan_bar(done: int, total: int, seconds: float) -> str:
    """A progress bar with the count and the time left, as HTML for the page."""
    if not total:  # an indeterminate bar until the folder has been scanned
        return '<progress id="rescan-progress"></progress> Scanning the folder…'
    left = ""
    if done:
        remaining = (total - done) * seconds / done
        left = f" · about {round(remaining / 60)} min left" if remaining >= 90 else (
            f" · about {max(1, round(remaining))} s left"
        )
    return (
        f'<progress id="rescan-progress" value="{done}" max="{total}"></progress> '
        f"{done} / {total}{left}"
    )


class WebApp:
    """The page's handlers, on the settings, model and database that `cli.main` built."""

    def __init__(self, settings: Settings, embedder: Embedder, database: Database) -> None:
        self.settings = settings
        self.embedder = embedder
        self.database = database
        self._downloads = tempfile.TemporaryDirectory(prefix="image-search-")
        self._link_block: gr.HTML | None = None  # serves originals; made by build()

    def search(
        self,
        image: Any,
        text: str | None,
        top_k: float,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
        under: str | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        min_score: float | None = None,
        but_not: str | None = None,
    ) -> tuple[Any, ...]:
        """An image, a text, or both together as one query, less the words `but_not`
        ([W:]TEXT); filtered."""
        path = uploaded_path(image)
        query = (text or "").strip()
        if path is None and not query:  # a hint, not an error: nothing turns red
            return gr.skip(), gr.skip(), EMPTY_QUERY, gr.skip()
        try:
            avoid = (text_part(but_not, -1, "'…but not'"),) if (but_not or "").strip() else ()
        except ConfigError as exc:
            raise page_error(str(exc)) from None
        request = Query(path, query or None, text_weight=float(text_weight), more=avoid)
        return self._answer(request, top_k, under, taken_after, taken_before, min_score)

    def find_similar(
        self,
        file_path: str | None,
        top_k: float,
        under: str | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        min_score: float | None = None,
    ) -> tuple[Any, ...]:
        """Images like an indexed file, by its stored vector (the model is not needed)."""
        if not (file_path or "").strip():
            raise page_error("Select a result first, then press Find similar.")
        if self._stored(file_path.strip()) is None:
            raise page_error(f"{file_path} is not indexed; Find similar works on results.")
        request = Query(like=file_path.strip())
        return self._answer(request, top_k, under, taken_after, taken_before, min_score)

    def _answer(
        self,
        query: Query,
        top_k: float,
        under: str | None,
        taken_after: str | None,
        taken_before: str | None,
        min_score: float | None,
    ) -> tuple[Any, ...]:
        k = max(1, min(MAX_TOP_K, int(top_k or self.settings.top_k)))
        store = Store(self.database, self.settings.table_name)
        searcher = Searcher(self.settings, store, self.embedder)
        try:
            filters = page_filters(under, taken_after, taken_before, min_score)
            result = searcher.search(query, k, filters)
        except ImageError as exc:
            raise page_error(f"That file cannot be used as a query image: {exc}.") from None
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        best = result.results[0].processed_path if result.results else None
        return best, gallery_of(result), self._note(result, filters), result.to_json()

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

    def _stored(self, file_path: str) -> Any:
        try:
            return Store(self.database, self.settings.table_name).rows.find(file_path)
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None

    def select_result(self, results: dict | None, event: gr.SelectData) -> tuple[Any, ...]:
        """A result picked in the gallery: its full path, and its original to open."""
        records = (results or {}).get("results") or []
        if not isinstance(event.index, int) or not 0 <= event.index < len(records):
            return gr.update(visible=False), "", ""
        path = records[event.index]["file_path"]
        return gr.update(visible=True), path, self.original_link(path)

    def original_link(self, file_path: str) -> str:
        """A link to the original file, for indexed files only. Gradio serves it from its
        cache through its own file route, which sits behind the page's login when there is
        one; nothing else of the photo folder is ever served."""
        stored = self._stored(file_path)
        if stored is None:
            raise page_error(f"{file_path} is not indexed; only indexed files are served.")
        if not Path(stored.file_path).is_file():
            return "The original file is gone (it is still indexed)."
        block = self._link_block or gr.HTML()
        cached = block.move_resource_to_block_cache(stored.file_path)
        return (
            f'<a id="open-original" href="{html.escape(file_url(str(cached)))}" '
            'target="_blank" rel="noopener">Open original</a>'
        )

    def duplicates(self, threshold: float, under: str | None) -> tuple[str, str, dict]:
        """Groups of near-identical images, as thumbnails and as JSON; nothing is deleted."""
        store = Store(self.database, self.settings.table_name)
        try:
            report = find_duplicates(store, float(threshold), build_filters(folders_of(under)))
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        if not report.groups:
            return f"No near-identical images at threshold {threshold:g}.", "", report.to_json()
        files = sum(len(group.members) for group in report.groups)
        note = (
            f"**{counted(len(report.groups), 'group')}**, {files} files (threshold "
            f"{threshold:g}). The first of each group is the one to keep (most pixels, then "
            "oldest); image-search never deletes or moves anything."
        )
        if len(report.groups) > MAX_GROUPS_SHOWN:
            note += f" Showing the first {MAX_GROUPS_SHOWN}; all are in the JSON below."
        return note, duplicates_html(report), report.to_json()

    def best_original(self, result: dict[str, Any] | None) -> Any:
        """The download button for the best match's original file (not its processed JPEG)."""
        hidden = gr.update(value=None, visible=False)
        if not result or not result.get("results"):
            return hidden
        shown = result["results"][0]["file_path"]
        stored = self._stored(shown)
        if stored is None or not Path(stored.file_path).is_file():
            return hidden
        copy = self._servable_copy(Path(stored.file_path), result.get("output_dir"))
        return gr.update(value=str(copy), visible=True, label=f"Download {display_path(copy.name)}")

    def _servable_copy(self, original: Path, output_dir: str | None) -> Path:
        """A copy of `original` the page may serve (it never serves the user's folders): the
        one the result folder already holds, else one made in a folder of our own."""
        saved = Path(output_dir) / original.name if output_dir else None
        if saved and saved.is_file() and saved.stat().st_size == original.stat().st_size:
            return saved
        folder = Path(tempfile.mkdtemp(prefix="original-", dir=self._downloads.name))
        shutil.copy2(original, folder / original.name)
        return folder / original.name

    def rescan(self) -> Iterator[tuple[str, Any]]:
        """Re-index the folder in a thread, redrawing a progress bar until it is done."""
        counts = {"done": 0, "total": 0}
        finished: dict[str, Any] = {}

        def report(done: int, total: int) -> None:
            counts.update(done=done, total=total)

        def work() -> None:
            try:
                finished["report"] = run_index(
                    self.settings, self.embedder, self.database, progress=Progress(callback=report)
                )
            except ImageSearchError as exc:
                finished["error"] = exc

        started = time.monotonic()
        worker = threading.Thread(target=work, name="rescan", daemon=True)
        worker.start()
        while worker.is_alive():
            yield rescan_bar(counts["done"], counts["total"], time.monotonic() - started), gr.skip()
            worker.join(RESCAN_REDRAW_S)
        if "error" in finished:
            raise page_error(str(finished["error"]))
        yield f"Rescan finished: {finished['report'].summary()}.", self.status()

    def status(self) -> str:
        try:
            return status_markdown(status_of(self.settings, self.database), self.settings)
        except ImageSearchError as exc:
            return f"⚠️ {exc}"

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="image-search") as app:
            gr.Markdown("# image-search\nDrop in a photo to find the most similar ones you have.")
            status = gr.Markdown(elem_id="status")
            with gr.Tabs():
                with gr.Tab("Search", id="search-tab"):
                    self._search_tab(status)
                with gr.Tab("Duplicates", id="duplicates-tab"):
                    self._duplicates_tab()
            app.load(self.status, outputs=status, api_visibility="private")
        return app

    def _search_tab(self, status: gr.Markdown) -> None:
        with gr.Column():
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        label="Query image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard", "webcam"],
                        elem_id="query-image",
                    )
                    with gr.Row():
                        text = gr.Textbox(
                            label="…or describe it in words",
                            elem_id="query-text",
                            placeholder="a red apple on a table",
                        )
                        but_not = gr.Textbox(
                            label="…but not",
                            elem_id="query-not",
                            placeholder="people (0.5:people weighs them half)",
                        )
                    text_weight = gr.Slider(
                        0,
                        1,
                        value=DEFAULT_TEXT_WEIGHT,
                        step=0.05,
                        label="Weight of the words when an image is given too",
                        elem_id="text-weight",
                    )
                    top_k = gr.Slider(
                        1,
                        MAX_TOP_K,
                        value=self.settings.top_k,
                        step=1,
                        label="How many results (top-k)",
                        elem_id="top-k",
                    )
                    filters = self._filter_controls()
                    search = gr.Button("Search", variant="primary", elem_id="search")
                    with gr.Row():
                        rescan = gr.Button("Rescan folder", elem_id="rescan")
                    rescan_note = gr.HTML(elem_id="rescan-note")
                with gr.Column(scale=2):
                    best = gr.Image(
                        label="Best match",
                        interactive=False,
                        elem_id="best-match",
                        height=420,
                        buttons=["fullscreen"],  # its download is the original, below
                    )
                    caption = gr.Markdown(elem_id="best-caption")
                    original = gr.DownloadButton(
                        "Download original", visible=False, size="sm", elem_id="best-original"
                    )
                    note = gr.Markdown(elem_id="result-note")
                    gallery = gr.Gallery(
                        label="Ranked results",
                        columns=5,
                        object_fit="contain",
                        elem_id="gallery",
                        buttons=["download", "fullscreen"],  # no share: a private tool
                    )
                    selection = self._selection_panel()
                    with gr.Accordion("Ranked results as JSON", open=False):
                        results = gr.JSON(elem_id="results-json")
            searched = gr.on(
                triggers=[search.click, text.submit, but_not.submit],
                fn=self.search,
                inputs=[image, text, top_k, text_weight, *filters, but_not],
                outputs=[best, gallery, note, results],
                api_name="search",
                preprocess=False,
            )
            searched.success(None, js=CLOSE_TOASTS, api_visibility="private")
            results.change(  # after a search or Find similar: caption and download
                lambda result: (best_caption(result), self.best_original(result)),
                inputs=results,
                outputs=[caption, original],
                api_visibility="private",
            )
            self._wire_selection(selection, gallery, results, top_k, filters, [best, gallery, note])
            rescan.click(self.rescan, outputs=[rescan_note, status], api_name="rescan")

    def _filter_controls(self) -> list[gr.components.Component]:
        with gr.Accordion("Filters", open=False, elem_id="filters"):
            under = gr.Textbox(
                label="Only files under these folders (one per line)",
                lines=2,
                elem_id="filter-under",
            )
            with gr.Row():
                after = gr.Textbox(
                    label="Taken on or after", placeholder="2024-05-31", elem_id="taken-after"
                )
                before = gr.Textbox(
                    label="Taken before", placeholder="2024-06-30", elem_id="taken-before"
                )
            min_score = gr.Slider(
                0, 1, value=0, step=0.01, label="Lowest score (0: any)", elem_id="min-score"
            )
        return [under, after, before, min_score]

    def _selection_panel(self) -> dict[str, Any]:
        """Shown when a result is selected: its full path, Find similar, Open original."""
        with gr.Group(visible=False, elem_id="selection") as panel:
            path = gr.Textbox(
                label="Selected result: full path",
                interactive=False,
                buttons=["copy"],
                elem_id="selected-path",
            )
            with gr.Row():
                similar = gr.Button("Find similar", elem_id="find-similar", scale=0)
                link = gr.HTML(elem_id="open-original-box", padding=True)
        self._link_block = link
        return {"panel": panel, "path": path, "similar": similar, "link": link}

    def _wire_selection(
        self,
        selection: dict[str, Any],
        gallery: gr.Gallery,
        results: gr.JSON,
        top_k: gr.Slider,
        filters: list[gr.components.Component],
        shown: list[gr.components.Component],
    ) -> None:
        gallery.select(
            self.select_result,
            inputs=[results],
            outputs=[selection["panel"], selection["path"], selection["link"]],
            api_visibility="private",
        )
        selection["similar"].click(
            self.find_similar,
            inputs=[selection["path"], top_k, *filters],
            outputs=[*shown, results],
            api_name="similar",
        )

    def _duplicates_tab(self) -> None:
        gr.Markdown(
            "Groups of near-identical images: copies, resized or re-encoded copies, burst "
            "shots. Nothing is ever deleted or moved."
        )
        with gr.Row():
            threshold = gr.Slider(
                0.5,
                1,
                value=DEFAULT_THRESHOLD,
                step=0.005,
                label="How alike (cosine similarity)",
                elem_id="duplicate-threshold",
            )
            under = gr.Textbox(
                label="Only under these folders (one per line)", lines=2, elem_id="duplicate-under"
            )
        find = gr.Button("Find duplicates", variant="primary", elem_id="find-duplicates")
        note = gr.Markdown(elem_id="duplicates-note")
        groups = gr.HTML(elem_id="duplicate-groups")
        with gr.Accordion("Groups as JSON", open=False):
            as_json = gr.JSON(elem_id="duplicates-json")
        find.click(
            self.duplicates,
            inputs=[threshold, under],
            outputs=[note, groups, as_json],
            api_name="duplicates",
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(
    settings: Settings,
    embedder: Embedder,
    database: Database,
    host: str,
    port: int,
) -> gr.Blocks:
    """Start the page in the background and return it (serve() waits on it)."""
    auth = None
    if settings.server_auth:
        user, _, password = settings.server_auth.partition(":")
        auth = (user, password)
    elif not is_loopback(host):
        log.warning(
            "serving on %s without a login: anyone who can reach this address can search "
            "your photos. Use --auth USER:PASSWORD",
            host,
        )
    web = WebApp(settings, embedder, database)
    app = web.build()
    app.queue(default_concurrency_limit=4)
    allowed = [
        str(settings.processed_directory.resolve()),
        str(settings.output_directory.resolve()),
        web._downloads.name,
    ]
    try:
        app.launch(
            server_name=host,
            server_port=port,
            auth=auth,
            allowed_paths=allowed,
            max_file_size=MAX_UPLOAD,
            css=PAGE_CSS,
            prevent_thread_lock=True,
            quiet=True,  # no share=True hint: this is a private tool
            footer_links=["api"],
        )
    except OSError as exc:  # the port is taken (Gradio names its own variables for that)
        log.debug("launch failed: %s", exc)
        raise ImageSearchError(
            f"cannot serve on {host}:{port}: the port is in use (another image-search?) or "
            "cannot be opened here. Choose another with --port"
        ) from None
    return app


def serve(
    settings: Settings, embedder: Embedder, database: Database, host: str, port: int
) -> None:
    """Serve the page until Ctrl-C or SIGTERM; the address is printed once it works."""
    app = launch(settings, embedder, database, host, port)
    try:
        print(f"Serving image-search on http://{host}:{port} (Ctrl-C to stop)", flush=True)
        while app.is_running:
            time.sleep(0.2)
    finally:
        app.close()
