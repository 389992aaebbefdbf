"""The Gradio page. It calls the same functions as the command line and nothing of its own."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.exceptions import StarletteDeprecationWarning

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

    def search(self, image: Any, text: str | None, top_k: float) -> tuple[Any, ...]:
        k = max(1, min(MAX_TOP_K, int(top_k or self.settings.top_k)))
        path = uploaded_path(image)
        query = (text or "").strip()
        if path is None and not query:  # a hint, not an error: nothing turns red
            return gr.skip(), gr.skip(), EMPTY_QUERY, gr.skip()
        store = Store(self.database, self.settings.table_name)
        searcher = Searcher(self.settings, store, self.embedder)
        try:
            result = searcher.by_image(path, k) if path else searcher.by_text(query, k)
        except ImageError as exc:
            raise page_error(f"That file cannot be used as a query image: {exc}.") from None
        except ImageSearchError as exc:
            raise page_error(str(exc)) from None
        best = result.results[0].processed_path if result.results else None
        note = f"Searched **{result.searched}** images."
        if result.output_dir:
            note += f" Result folder: `{result.output_dir}`"
        for warning in result.warnings:
            note += f"\n\n⚠️ {warning}"
        return best, gallery_of(result), note, result.to_json()

    def best_original(self, result: dict[str, Any] | None) -> Any:
        """The download button for the best match's original file (not its processed JPEG)."""
        hidden = gr.update(value=None, visible=False)
        if not result or not result.get("results"):
            return hidden
        shown = result["results"][0]["file_path"]
        original = Store(self.database, self.settings.table_name).rows.real_path_of(shown)
        if original is None or not Path(original).is_file():
            return hidden
        # A copy in a folder of our own: the page never serves the user's folders directly.
        folder = Path(tempfile.mkdtemp(prefix="original-", dir=self._downloads.name))
        copy = folder / Path(original).name
        shutil.copy2(original, copy)
        return gr.update(value=str(copy), visible=True, label=f"Download {display_path(copy.name)}")

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
                    with gr.Accordion("Ranked results as JSON", open=False):
                        results = gr.JSON(elem_id="results-json")
            searched = gr.on(
                triggers=[search.click, text.submit],
                fn=self.search,
                inputs=[image, text, top_k],
                outputs=[best, gallery, note, results],
                api_name="search",
                preprocess=False,
            )
            searched.success(
                lambda result: (best_caption(result), self.best_original(result)),
                inputs=results,
                outputs=[caption, original],
                js=CLOSE_TOASTS,
                api_visibility="private",
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
