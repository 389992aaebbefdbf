"""Query overhead: a warm in-process search by one 12-megapixel image against its parts.

    uv run python bench/bench_query_overhead.py [--runs 15]

Parts: the reference preprocessing of that image (draft decode, fit 960x540, JPEG encode,
resize to the model input) plus the model's forward at batch 1. The search is the project's own
Searcher.by_image against the 300 images bench_ingest.py indexed (run that first), result
folder included.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import (
    DATA,
    jpeg_folder,
    median_of,
    reference_preprocess,
    timed,
    vit_b32_folder,
)

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.search import Searcher
from image_search.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    folder = jpeg_folder("twelve-mp-300", 300)
    query = sorted(folder.iterdir())[7]
    output = Path(tempfile.mkdtemp(prefix="bench-query-"))
    settings = Settings(
        source_directory=folder,
        output_directory=output,
        data_directory=DATA / "ingest-db",
        model_name=str(vit_b32_folder()),
        dimension=512,
        device="cpu",
        batch_size=16,
        table_name="bench_ingest_0",
    )
    embedder = Embedder(settings.model_name, "cpu", settings.dimension)
    run_index(settings, embedder)  # no-op if bench_ingest.py ran
    import torch

    model = embedder.model()._model

    def reference() -> None:
        image = reference_preprocess(query)
        pixels = torch.from_numpy(np.asarray(image, np.float32).transpose(2, 0, 1)[None] / 255)
        with torch.inference_mode():
            model.get_image_features(pixel_values=pixels)

    with open_store(settings) as store:
        searcher = Searcher(settings, store, embedder)
        searcher.by_image(query)  # warm
        reference()
        ours, parts = [], []
        for _ in range(args.runs):  # interleaved, so that noise hits both alike
            ours += timed(lambda: searcher.by_image(query), 1)
            parts += timed(reference, 1)
    shutil.rmtree(output)
    search_s, parts_s = median_of(ours), median_of(parts)
    print(f"runs: {args.runs}, query: one 12-MP JPEG, table: 300 images")
    print(f"reference preprocess + forward (batch 1): {parts_s * 1000:7.1f} ms")
    print(f"image-search search (result folder incl.): {search_s * 1000:7.1f} ms")
    print(f"ratio search / parts: {search_s / parts_s:.3f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
