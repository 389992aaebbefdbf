"""The page started on an address: its login, the warning for an open one, and the wait
until Ctrl-C or SIGTERM (`serve`)."""

from __future__ import annotations

import ipaddress
import logging
import time

from .config import Settings
from .errors import ImageSearchError
from .models import Embedder
from .store import Database
from .web import WebApp
from .web_files import MAX_UPLOAD
from .web_layout import PAGE_CSS, Page
from .web_text import PAGE_I18N

log = logging.getLogger(__name__)


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
) -> Page:
    """Start the page in the background and return it (serve() waits on it)."""
    auth = None
    if settings.server_auth:
        user, _, password = settings.server_auth.partition(":")
        auth = (user, password)
    elif not is_loopback(host):
        log.warning(
            "serving on %s without a login: anyone who can reach this address can search "
            "your photos. Set IMAGE_SEARCH_SERVER_AUTH=USER:PASSWORD (or server-auth in the "
            "config file)",
            host,
        )
    web = WebApp(settings, embedder, database)
    app = web.build()
    app.queue(default_concurrency_limit=4)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            auth=auth,
            allowed_paths=[],  # Gradio serves only its cache, where web_files puts copies
            max_file_size=MAX_UPLOAD,
            css=PAGE_CSS,
            prevent_thread_lock=True,
            quiet=True,  # no share=True hint: this is a private tool
            footer_links=["api"],
            i18n=PAGE_I18N,  # the page's words in the browser's language (web_text)
        )
    except OSError as exc:  # the port is taken (Gradio names its own variables for that)
        web.close()
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
