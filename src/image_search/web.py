"""The Gradio page. It calls the same functions as the command line and nothing of its own."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from .config import Settings
from .errors import ImageError, ImageSearchError
from .ingest import Progress, run_index
from .models import Embedder
from .scan import display_path
from .search import Searcher, SearchResult
from .status import status_markdown, status_of
from .store import Database, Store

log = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"
MAX_TOP_K = 100


def page_error(message: str) -> gr.Error:
    """A message for the page, logged as one line rather than Gradio's full traceback."""
    log.warning("%s", message)
    return gr.Error(message, print_exception=False)


def uploaded_path(payload: Any) -> Path | None:
    """The server-side path of an uploaded image (the event runs with preprocess=False,
    so that an unreadable upload reaches our own error message, not Gradio's)."""
    if not payload:
        return None
    if isinstance(payload, dict):
        path = payload.get("path")
        return Path(path) if path else None
    return Path(str(payload))


def gallery_of(result: SearchResult) -> list[tuple[str, str]]:
    return [
        (m.processed_path, f"{m.score:.3f} · {display_path(m.file_name)}") for m in result.results
    ]


class WebApp:
    """The page's handlers, on the settings, model and database that `cli.main` built."""

    def __init__(self, settings: Settings, embedder: Embedder, database: Database) -> None:
        self.settings = settings
        self.embedder = embedder
        self.database = database

    def search(self, image: Any, text: str | None, top_k: float) -> tuple[Any, ...]:
        k = max(1, min(MAX_TOP_K, int(top_k or self.settings.top_k)))
        path = uploaded_path(image)
        query = (text or "").strip()
        if path is None and not query:
            raise page_error("Drop an image (or type a text query) first, then press Search.")
        store = Store(self.database, self.settings.table_name)
        searcher = Searcher(self.settings, store, self.embedder)
        try:
            result = searcher.by_image(path, k) if path else searcher.by_text(query, k)
        except ImageError as exc:
            raise page_error(f"That file cannot be used as a query image: {exc}.") from None
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        best = result.results[0].processed_path if result.results else None
        note = f"Searched **{result.searched}** images. Result folder: `{result.output_dir}`"
        for warning in result.warnings:
            note += f"\n\n⚠️ {warning}"
        return best, gallery_of(result), note, result.to_json()

    def rescan(self, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:  # noqa: B008
        def report(done: int, total: int) -> None:
            progress(done / total, desc=f"Indexing {done}/{total}")

        try:
            summary = run_index(
                self.settings, self.embedder, self.database, progress=Progress(callback=report)
            )
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        return f"Rescan finished: {summary.summary()}.", self.status()

    def status(self) -> str:
        try:
            return status_markdown(status_of(self.settings, self.database), self.settings)
        except ImageSearchError as exc:
            return f"⚠️ {exc}"

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="image-search") as app:
            gr.Markdown("# image-search\nDrop in a photo to find the most similar ones you have.")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        label="Query image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard", "webcam"],
                        elem_id="query-image",
                    )
                    text = gr.Textbox(
                        label="…or describe it in words",
                        elem_id="query-text",
                        placeholder="a red apple on a table",
                    )
                    top_k = gr.Slider(
                        1,
                        MAX_TOP_K,
                        value=self.settings.top_k,
                        step=1,
                        label="How many results (top-k)",
                        elem_id="top-k",
                    )
                    search = gr.Button("Search", variant="primary", elem_id="search")
                    with gr.Row():
                        rescan = gr.Button("Rescan folder", elem_id="rescan")
                    rescan_note = gr.Markdown(elem_id="rescan-note")
                with gr.Column(scale=2):
                    best = gr.Image(
                        label="Best match", interactive=False, elem_id="best-match", height=420
                    )
                    note = gr.Markdown(elem_id="result-note")
                    gallery = gr.Gallery(
                        label="Ranked results",
                        columns=5,
                        object_fit="contain",
                        elem_id="gallery",
                    )
                    with gr.Accordion("Ranked results as JSON", open=False):
                        results = gr.JSON(elem_id="results-json")
            gr.on(
                triggers=[search.click, text.submit],
                fn=self.search,
                inputs=[image, text, top_k],
                outputs=[best, gallery, note, results],
                api_name="search",
                preprocess=False,
            )
            rescan.click(self.rescan, outputs=[rescan_note, status], api_name="rescan")
            app.load(self.status, outputs=status, api_visibility="private")
        return app


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
    block: bool = True,
) -> gr.Blocks:
    """Start the page; with block=False return at once (tests), else wait for Ctrl-C."""
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
    app = WebApp(settings, embedder, database).build()
    app.queue(default_concurrency_limit=4)
    allowed = [
        str(settings.processed_directory.resolve()),
        str(settings.output_directory.resolve()),
    ]
    app.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        allowed_paths=allowed,
        max_file_size=MAX_UPLOAD,
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api"],
    )
    return app


def serve(
    settings: Settings, embedder: Embedder, database: Database, host: str, port: int
) -> None:
    print(f"Serving image-search on http://{host}:{port} (Ctrl-C to stop)")
    launch(settings, embedder, database, host, port, block=True)
