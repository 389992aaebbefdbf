"""`image-search` (cli.main, unchanged) whose real model waits at a gate from its Nth image
batch on: a test in another process can then catch a Rescan mid-run, on any machine.

    python tests/held_model.py GATE_FOLDER N serve --env config.json ...

At the gate the model touches GATE_FOLDER/held and waits until GATE_FOLDER/open exists."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

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
            (self.gate / "held").touch()
            while not (self.gate / "open").exists():
                time.sleep(0.02)
        return super().embed_images(images)


if __name__ == "__main__":
    HeldEmbedder.gate, HeldEmbedder.hold_from = Path(sys.argv[1]), int(sys.argv[2])
    cli.make_embedder = HeldEmbedder.from_settings
    sys.exit(cli.main(sys.argv[3:]))
