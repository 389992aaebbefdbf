"""Backends side by side: torch fp32, ONNX fp32 and ONNX int8 on the same 12-megapixel JPEGs.

Also torch bf16 for the model alone (its agreement with fp32, issue 10; on a CPU its speed
says little).

    uv run python bench/bench_onnx.py [--images 96] [--runs 5]

For each: the model alone (the image tower's forward on the same ready pixel batches of 16),
the whole `index` (in process, model loaded, a fresh table each run), and how far its vectors
are from torch fp32's (cosine, mean and minimum) for the same pixels and for the whole
embedding path (each backend's own preprocessing of the same processed JPEGs). They are
run interleaved, round after round, so that noise from a shared machine hits all alike;
the figures are medians. Targets (issue 14): ONNX int8 >= 2x torch fp32's model throughput
with mean cosine >= 0.98; ONNX fp32 >= 1x with cosine >= 0.9999.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np
from common import DATA, cores, jpeg_folder, median_of, timed, vit_b32_folder

from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.models.onnx_runtime import PixelRecipe
from image_search.store import VectorSpec, open_store

BATCH = 16
VARIANTS = {
    "torch fp32": ("torch", "fp32"),
    "onnx fp32": ("onnx", "fp32"),
    "onnx int8": ("onnx", "int8"),
    "torch bf16": ("torch", "bf16"),  # issue 10: bf16's agreement with fp32 (model alone only)
}
INDEXED = ("torch fp32", "onnx fp32", "onnx int8")


def forward(embedder: Embedder, pixels: np.ndarray) -> np.ndarray:
    """The image tower alone on a ready batch, as float32 unit vectors."""
    model = embedder.model()
    if embedder.backend == "torch":
        import torch

        inner = model._model
        with torch.inference_mode():
            output = inner.get_image_features(pixel_values=torch.from_numpy(pixels).to(inner.dtype))
        vectors = getattr(output, "pooler_output", output).float().numpy()
    else:
        vectors = model._image.run({"pixel_values": pixels})
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def index_seconds(settings: Settings, embedder: Embedder, name: str) -> float:
    table = "bench_onnx_" + name.replace(" ", "_")
    with open_store(settings, table) as store:
        store.schema.drop_if_other_vectors(VectorSpec("", 0))  # the last run's table goes
    fresh = dataclasses.replace(
        settings, table_name=table, backend=embedder.backend, precision=embedder.precision
    )
    started = time.perf_counter()
    report = run_index(fresh, embedder)
    elapsed = time.perf_counter() - started
    assert report.added == report.scanned and not report.failed, report.summary()
    return elapsed


def agreement(vectors: np.ndarray, reference: np.ndarray) -> str:
    cosine = (vectors * reference).sum(axis=1)
    return f"{cosine.mean():.5f} / {cosine.min():.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    paths = sorted(folder.iterdir())[: args.images]
    model_folder = vit_b32_folder()
    settings = Settings(
        source_directory=folder,
        data_directory=DATA / "onnx-db",
        model_name=str(model_folder),
        dimension=512,
        device="cpu",
        batch_size=BATCH,
    )
    embedders, loads = {}, {}
    for name, (backend, precision) in VARIANTS.items():
        embedders[name] = Embedder(
            settings.model_name,
            "cpu",
            settings.dimension,
            backend=backend,
            precision=precision,
            cache_directory=DATA / "onnx-models",
        )
        started = time.perf_counter()
        embedders[name].model()  # an ONNX export happens here once, then the cache serves
        loads[name] = time.perf_counter() - started

    processed = [prepare_file(p, ResizeSpec.of(settings)) for p in paths]
    recipe = PixelRecipe.from_file(model_folder / "preprocessor_config.json")
    batches = [recipe(processed[i : i + BATCH]) for i in range(0, len(processed), BATCH)]
    same_pixels = {
        n: np.concatenate([forward(e, b) for b in batches]) for n, e in embedders.items()
    }
    whole_path = {n: e.embed_images(processed) for n, e in embedders.items()}

    model_runs = {name: [] for name in VARIANTS}
    index_runs = {name: [] for name in INDEXED}
    for _ in range(args.runs):
        for name, embedder in embedders.items():
            per_batch = median_of(timed(lambda e=embedder: forward(e, batches[0]), 3))
            model_runs[name].append(per_batch / BATCH)
            if name in INDEXED:
                index_runs[name].append(index_seconds(settings, embedder, name))

    reference = "torch fp32"
    model_rate = {n: 1 / median_of(r) for n, r in model_runs.items()}
    index_rate = {n: len(paths) / median_of(r) for n, r in index_runs.items()}
    print(
        f"images: {len(paths)} 12-MP JPEGs, ViT-B/32 random weights, batch {BATCH}, "
        f"cores {cores()}, runs {args.runs} (medians)"
    )
    print(
        f"{'':12} {'load s':>7} {'model img/s':>12} {'x torch':>8} {'index img/s':>12} "
        f"{'x torch':>8}  cosine to torch fp32, mean / min: same pixels | whole path"
    )
    for name in VARIANTS:
        indexed = (
            f"{index_rate[name]:12.1f} {index_rate[name] / index_rate[reference]:8.2f}"
            if name in INDEXED
            else f"{'-':>12} {'-':>8}"
        )
        print(
            f"{name:12} {loads[name]:7.1f} {model_rate[name]:12.1f} "
            f"{model_rate[name] / model_rate[reference]:8.2f} {indexed}  "
            f"{agreement(same_pixels[name], same_pixels[reference])} | "
            f"{agreement(whole_path[name], whole_path[reference])}"
        )
    for name, (speed, floor) in {"onnx int8": (2.0, 0.98), "onnx fp32": (1.0, 0.9999)}.items():
        ratio = model_rate[name] / model_rate[reference]
        cosine = float((same_pixels[name] * same_pixels[reference]).sum(axis=1).mean())
        met = ratio >= speed and cosine >= floor
        print(
            f"target {name}: model >= {speed}x torch fp32 ({ratio:.2f}x), mean cosine >= "
            f"{floor} ({cosine:.5f}): {'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
