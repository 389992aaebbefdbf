"""Watch mode: re-run the (incremental) index shortly after the folder stops changing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .scan import NO_EXCLUSIONS, Exclusions, is_image_name

DEBOUNCE_S = 1.0
POLL_S = 0.2


class ChangeRecorder(FileSystemEventHandler):
    """Remembers when an image file or a folder last changed; ignores hidden entries and what
    the scan leaves out (a NAS writing thumbnails into @eaDir starts no run)."""

    def __init__(self, root: Path, exclusions: Exclusions = NO_EXCLUSIONS) -> None:
        self.root = os.path.abspath(root)
        self.exclusions = exclusions
        self.last_change: float | None = None
        self._lock = threading.Lock()

    def _relevant(self, path: str, is_directory: bool) -> bool:
        relative = os.path.relpath(path, self.root)
        if any(part.startswith(".") for part in relative.split(os.sep) if part != "."):
            return False
        if self.exclusions.excludes_within(self.root, path):
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


class FolderWatcher:
    """Watches `root` from the moment it is entered, so that nothing that changes during the
    first index run is missed."""

    def __init__(
        self, root: Path, exclusions: Exclusions = NO_EXCLUSIONS, debounce: float = DEBOUNCE_S
    ) -> None:
        self.debounce = debounce
        self._recorder = ChangeRecorder(root, exclusions)
        self._observer = Observer()
        self._observer.schedule(self._recorder, str(root), recursive=True)

    def __enter__(self) -> FolderWatcher:
        self._observer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._observer.stop()
        self._observer.join()

    def wait_for_changes(self, stop: threading.Event | None = None) -> bool:
        """Block until a burst of changes has settled (True) or `stop` is set (False)."""
        stop = stop or threading.Event()
        while not stop.wait(POLL_S):
            if self._recorder.settled(self.debounce):
                return True
        return False
