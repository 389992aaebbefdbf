"""ONNX int8 against fp32 on the same exported graph, and what one image at a time costs int8.

    uv run python bench/bench_int8_agreement.py [--images 1000] [--runs 7] [--large]
        [--index 48] [--model jinaai/jina-clip-v2 --dimension 1024]

Agreement (issue 17, item 4), on CLIP ViT-B/32 with random weights and `--images` generated
photos of two kinds (smooth colour fields with noise, colour fields with blocks): the mean and
minimum cosine between each image's int8 and fp32 vectors, and the mean overlap of the top-10
rankings, each image a query against all the others (int8 vectors ranked among int8 vectors,
fp32 among fp32). Target: int8 keeps >= 0.95 of the top-10, or `precision` `auto` should pick
fp32 on the CPU. `--model` measures the agreement on another model instead (a hub id or a
folder: jina-clip-v2's own int8 and fp32 graphs where the hub is reachable).

Cost: the int8 image tower runs each image alone (its activations are quantised with one
scale per input tensor, so a batch would change a photo's vector). Side by side, interleaved
round after round, medians: the same int8 graph on a batch of 16 at once against one image at a
time, and fp32 on the batch, for ViT-B/32 and for the tests' tiny CLIP; with `--large`, also for
a random ViT-L/14 at 512 px, the compute class of the default model's vision tower (on a batch
of 4, at most 3 rounds: about 5 s per image on 2 loaded cores). With `--index N`, also the
whole `index` of N 12-megapixel JPEGs with ViT-B/32 int8, one at a time against the batch (as
bench_onnx.py runs it: in process, model loaded, a fresh table each run).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import numpy as np
from bench_onnx import index_seconds
from common import (
    DATA,
    cores,
    jpeg_folder,
    median_of,
    photo_like,
    vit_b32_folder,
    vit_l14_at_512_config,
)
from imagegen import photo
from PIL import Image
from tiny_models import build_tiny_clip

from image_search.config import Settings
from image_search.models import Embedder
from image_search.models.onnx_export import quantise_int8
from image_search.models.onnx_runtime import Tower

BATCH = 16
TOP = 10
TARGET_OVERLAP = 0.95
PHOTO_SIZE = (320, 240)


def photos(count: int) -> list[Image.Image]:
    """Varied generated photos, the two generators alternating."""
    return [photo_like(i, PHOTO_SIZE) if i % 2 else photo(i, *PHOTO_SIZE) for i in range(count)]


def onnx_embedder(folder: str, precision: str, dimension: int = 512) -> Embedder:
    return Embedder(
        folder,
        "cpu",
        dimension,
        backend="onnx",
        precision=precision,
        cache_directory=DATA / "onnx-models",
    )


def top_k(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows by cosine (the vectors are unit vectors)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argpartition(-scores, k, axis=1)[:, :k]
    return nearest


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """For each query, the share of a's top-k that b's top-k holds too."""
    return np.array(
        [len(set(x) & set(y)) / k for x, y in zip(top_k(a, k), top_k(b, k), strict=True)]
    )


def agreement(
    folder: str, dimension: int, images: list[Image.Image]
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the cosine between its int8 and fp32 vectors, and its top-10 overlap."""
    vectors = {}
    for precision in ("fp32", "int8"):
        embedder = onnx_embedder(folder, precision, dimension)
        started = time.perf_counter()
        vectors[precision] = np.concatenate(
            [embedder.embed_images(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
        )
        print(
            f"  embedded {len(images)} images in {precision}: {time.perf_counter() - started:.0f} s"
        )
    cosine = (vectors["int8"] * vectors["fp32"]).sum(axis=1)
    scores = np.sort(vectors["fp32"] @ vectors["fp32"].T, axis=1)[:, ::-1]  # self first
    gap = (scores[:, TOP] - scores[:, TOP + 1]).mean()
    print(
        f"  how close the photos are (fp32): mean cosine to the 1st neighbour "
        f"{scores[:, 1].mean():.4f}, to the {TOP}th {scores[:, TOP].mean():.4f}, to any other "
        f"{scores[:, 1:].mean():.4f}; mean gap from the {TOP}th to the next {gap:.5f}"
    )
    return cosine, top_k_overlap(vectors["fp32"], vectors["int8"], TOP)


def throughput(folder: str, images: list[Image.Image], runs: int) -> dict[str, float]:
    """Images per second of the image tower on one ready batch: int8 at once, int8 one image at
    a time (what an index run does), fp32 at once."""
    fp32 = onnx_embedder(folder, "fp32").model()._image
    one_at_a_time = onnx_embedder(folder, "int8").model()
    pixels = one_at_a_time._pixels(images[:BATCH])
    per_image = one_at_a_time._image
    assert per_image.one_at_a_time, "int8 should run one image at a time"
    batched = copy.copy(per_image)
    batched.one_at_a_time = False
    towers = {
        f"int8 batch of {BATCH}": batched,
        "int8 one at a time": per_image,
        f"fp32 batch of {BATCH}": fp32,
    }
    return rates(towers, pixels, runs)


def large_int8_tower() -> Tower:
    """A random ViT-L/14 vision tower at 512 px in int8, quantised as an export is."""
    folder = DATA / "vit-l14-512-int8"
    graph = folder / "image.onnx"
    if not graph.exists():
        import torch
        from transformers import CLIPVisionModelWithProjection

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(vit_l14_at_512_config()).eval()
        model.config.return_dict = False  # a tuple, image_embeds first
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 512, 512),),
            str(folder / "fp32.onnx"),
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        quantise_int8(folder / "fp32.onnx", graph)
        (folder / "fp32.onnx").unlink()
    return Tower(graph, "image_embeds", "cpu", one_at_a_time=True)


def large_throughput(runs: int) -> dict[str, float]:
    per_image = large_int8_tower()
    batched = copy.copy(per_image)
    batched.one_at_a_time = False
    pixels = np.random.default_rng(0).standard_normal((4, 3, 512, 512)).astype(np.float32)
    return rates({"int8 batch of 4": batched, "int8 one at a time": per_image}, pixels, runs)


def index_rates(folder: str, count: int, runs: int) -> dict[str, float]:
    """Images per second of whole index runs, int8 at once against one image at a time."""
    jpegs = jpeg_folder(f"twelve-mp-{count}", count)
    settings = Settings(
        source_directory=jpegs,
        data_directory=DATA / "onnx-db",
        model_name=folder,
        dimension=512,
        device="cpu",
        batch_size=BATCH,
    )
    per_image = onnx_embedder(folder, "int8")
    batched = onnx_embedder(folder, "int8")
    batched.model()._image.one_at_a_time = False
    embedders = {f"int8 batch of {BATCH}": batched, "int8 one at a time": per_image}
    samples: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(runs):
        for name, embedder in embedders.items():
            samples[name].append(index_seconds(settings, embedder, name.replace(" ", "_")))
    return {name: count / median_of(times) for name, times in samples.items()}


def rates(towers: dict[str, Tower], pixels: np.ndarray, runs: int) -> dict[str, float]:
    """Images per second of each tower on `pixels`, run interleaved round after round."""
    feeds = {"pixel_values": pixels}
    samples: dict[str, list[float]] = {name: [] for name in towers}
    for tower in towers.values():
        tower.run(feeds)  # warm up
    for _ in range(runs):
        for name, tower in towers.items():
            started = time.perf_counter()
            tower.run(feeds)
            samples[name].append(time.perf_counter() - started)
    return {name: len(pixels) / median_of(times) for name, times in samples.items()}


def against_first(rates: dict[str, float]) -> list[tuple[str, float, float]]:
    first = next(iter(rates.values()))
    return [(name, rate, rate / first) for name, rate in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--large", action="store_true", help="also a ViT-L/14 at 512 px")
    parser.add_argument("--index", type=int, default=0, help="also index N 12-MP JPEGs")
    parser.add_argument("--model", help="the agreement on this model (default: ViT-B/32)")
    parser.add_argument("--dimension", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    vit_b32 = str(vit_b32_folder())
    tiny = DATA / "tiny-clip"
    if not (tiny / "config.json").exists():
        build_tiny_clip(tiny)
    images = photos(args.images)
    print(f"cores {cores()}, runs {args.runs} (medians)")
    measured = {
        "ViT-B/32 image tower": lambda: throughput(vit_b32, images, args.runs),
        "tiny CLIP image tower": lambda: throughput(str(tiny), images, args.runs),
    }
    if args.large:
        measured["ViT-L/14 at 512 px image tower"] = lambda: large_throughput(min(args.runs, 3))
    if args.index:
        measured[f"ViT-B/32 whole index of {args.index} 12-MP JPEGs"] = lambda: index_rates(
            vit_b32, args.index, min(args.runs, 3)
        )
    for name, measure in measured.items():
        print(f"{name}, img/s (x the int8 batch):")
        for variant, rate, ratio in against_first(measure()):
            print(f"  {variant:20} {rate:10.2f} ({ratio:.2f}x)")

    model = args.model or vit_b32
    name = args.model or "ViT-B/32 random weights"
    print(f"agreement, {name}, {len(images)} generated photos {PHOTO_SIZE}:")
    cosine, overlap = agreement(model, args.dimension, images)
    print(f"  cosine int8 to fp32: mean {cosine.mean():.5f}, min {cosine.min():.5f}")
    print(
        f"  top-{TOP} overlap, int8 ranking against fp32: mean {overlap.mean():.4f}, "
        f"queries with all {TOP} kept {np.mean(overlap == 1.0):.3f}, worst {overlap.min():.1f}"
    )
    kept = overlap.mean() >= TARGET_OVERLAP
    print(
        f"target: int8 keeps >= {TARGET_OVERLAP} of the top-{TOP} ({overlap.mean():.4f}): "
        f"{'met' if kept else 'NOT met (precision auto should pick fp32 on the CPU)'}"
    )


if __name__ == "__main__":
    main()
