"""`image-search` (cli.main, unchanged) whose real model waits at a gate (gate.py) from its Nth
image batch on: a test in another process can then catch a run mid-batch, on any machine.

    python tests/held_model.py GATE_FOLDER N index --env config.json ...

It also touches GATE_FOLDER/stopping once the page has been asked to stop its Rescans
(SIGTERM or Ctrl-C reached the server), so that a test can wait for that rather than sleep."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from gate import hold

from image_search import cli
from image_search.models import Embedder


class HeldEmbedder(Embedder):
    """The configured model; its image batches from the `hold_from`th on wait at the gate."""

    gate: Path
    hold_from: int
    calls = 0

    def embed_images(self, images: Any) -> Any:
        HeldEmbedder.calls += 1
        if HeldEmbedder.calls >= self.hold_from:
            hold(self.gate)
        return super().embed_images(images)


class SaysWhenSet(threading.Event):
    """The page's stop flag, touching GATE_FOLDER/stopping once the page's own code sets it:
    a page that never asks its Rescans to stop never touches it, and its test fails."""

    def set(self) -> None:
        super().set()
        (HeldEmbedder.gate / "stopping").touch()


def say_when_stopping() -> None:
    """Give each page a stop flag that says when it is set."""
    from image_search.web import WebApp  # the page's code only for a page's run

    made = WebApp.__init__

    def with_a_flag_that_says(web: WebApp, *args: Any, **kwargs: Any) -> None:
        made(web, *args, **kwargs)
        web.stopping = SaysWhenSet()

    WebApp.__init__ = with_a_flag_that_says  # type: ignore[method-assign]


if __name__ == "__main__":
    HeldEmbedder.gate, HeldEmbedder.hold_from = Path(sys.argv[1]), int(sys.argv[2])
    cli.make_embedder = HeldEmbedder.from_settings
    if sys.argv[3] == "serve":
        say_when_stopping()
    sys.exit(cli.main(sys.argv[3:]))
