"""Ingest efficiency: `index` on 12-megapixel JPEGs against the sum of its irreducible parts.

    uv run python bench/bench_ingest.py [--images 300] [--runs 3]

Parts, measured in the same run: the bare model forward on ready tensors at the same batch size,
plus a reference preprocessing (Pillow draft decode, fit to 960x540, JPEG encode, resize to the
model input) timed on one core and divided by the cores. The index runs in process with the model
already loaded (its load is a one-time cost, reported apart), into a fresh table each run.
"""

from __future__ import annotations

import argparse
import time

from common import (
    DATA,
    cores,
    jpeg_folder,
    median_of,
    reference_preprocess,
    timed,
    vit_b32_folder,
)

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.store import VectorSpec, open_store

BATCH = 16


def bare_model_seconds(embedder: Embedder, images: int, runs: int) -> float:
    """The model forward on ready pixel tensors for `images` images, in batches of BATCH."""
    import torch

    model = embedder.model()._model  # the transformers model inside the adapter
    pixels = torch.randn(BATCH, 3, 224, 224)
    with torch.inference_mode():
        model.get_image_features(pixel_values=pixels)
        per_batch = median_of(
            timed(lambda: model.get_image_features(pixel_values=pixels), runs + 2)
        )
    return per_batch * images / BATCH


def reference_preprocess_seconds(paths: list, sample: int) -> float:
    """One core's reference preprocessing of every image, divided by the cores."""
    chosen = paths[:: max(1, len(paths) // sample)][:sample]
    per_image = median_of([timed(lambda p=p: reference_preprocess(p), 1)[0] for p in chosen])
    return per_image * len(paths) / cores()


def index_seconds(settings: Settings, embedder: Embedder, run: int) -> float:
    table = f"bench_ingest_{run}"
    with open_store(settings, table) as store:
        store.schema.drop_if_other_vectors(VectorSpec("", 0))  # a leftover of an earlier run goes
    fresh = Settings(**{**settings.__dict__, "table_name": table})
    started = time.perf_counter()
    report = run_index(fresh, embedder)
    elapsed = time.perf_counter() - started
    assert report.added == report.scanned and not report.failed, report.summary()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    paths = sorted(folder.iterdir())[: args.images]
    model_folder = vit_b32_folder()
    settings = Settings(
        source_directory=folder,
        data_directory=DATA / "ingest-db",
        model_name=str(model_folder),
        dimension=512,
        device="cpu",
        batch_size=BATCH,
    )
    embedder = Embedder(settings.model_name, "cpu", settings.dimension)
    started = time.perf_counter()
    embedder.model()
    load = time.perf_counter() - started

    index_runs, model_runs, pre_runs = [], [], []
    for run in range(args.runs):  # interleaved, so that noise hits all parts alike
        model_runs.append(bare_model_seconds(embedder, len(paths), 3))
        pre_runs.append(reference_preprocess_seconds(paths, 40))
        index_runs.append(index_seconds(settings, embedder, run))
    model_s, pre_s, index_s = map(median_of, (model_runs, pre_runs, index_runs))
    parts = model_s + pre_s
    print(f"images: {len(paths)} 12-MP JPEGs, batch {BATCH}, cores {cores()}")
    print(f"model load (one-time): {load:.1f} s")
    print(f"bare model forward:     {model_s:6.1f} s  ({len(paths) / model_s:5.1f} img/s)")
    print(f"reference preprocess:   {pre_s:6.1f} s  (one core / {cores()})")
    print(f"sum of parts:           {parts:6.1f} s")
    print(
        f"image-search index:     {index_s:6.1f} s  ({len(paths) / index_s:5.1f} img/s)"
        f"  runs: {', '.join(f'{r:.1f}' for r in index_runs)}"
    )
    print(
        f"index / sum of parts:   {index_s / parts:.3f}  (target <= 1.11; "
        f"efficiency {parts / index_s:.2f})"
    )
    print(f"throughput / bare model: {model_s / index_s:.2f}")


if __name__ == "__main__":
    main()
