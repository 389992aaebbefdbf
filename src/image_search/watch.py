"""Watch mode: re-run the (incremental) index shortly after the folder stops changing."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .scan import is_image_name

DEBOUNCE_S = 1.0
POLL_S = 0.2


class ChangeRecorder(FileSystemEventHandler):
    """Remembers when an image file or a folder last changed; ignores hidden entries."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self.last_change: float | None = None
        self._lock = threading.Lock()

    def _relevant(self, path: str, is_directory: bool) -> bool:
        relative = os.path.relpath(path, self.root)
        if any(part.startswith(".") for part in relative.split(os.sep) if part != "."):
            return False
        return is_directory or is_image_name(path)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(p and self._relevant(os.fsdecode(p), event.is_directory) for p in paths):
            with self._lock:
                self.last_change = time.monotonic()

    def settled(self, quiet_for: float) -> bool:
        """True once, when changes happened and then nothing for `quiet_for` seconds."""
        with self._lock:
            if self.last_change is None or time.monotonic() - self.last_change < quiet_for:
                return False
            self.last_change = None
            return True


def watch_folder(
    root: Path,
    on_change: Callable[[], None],
    debounce: float = DEBOUNCE_S,
    stop: threading.Event | None = None,
) -> None:
    """Call `on_change` after each burst of changes under `root`, until Ctrl-C or `stop`."""
    recorder = ChangeRecorder(root)
    observer = Observer()
    observer.schedule(recorder, str(root), recursive=True)
    observer.start()
    stop = stop or threading.Event()
    try:
        while not stop.wait(POLL_S):
            if recorder.settled(debounce):
                on_change()
    except KeyboardInterrupt:
        pass
    finally:
        observer.stop()
        observer.join()
