"""Ingest efficiency: `index` on 12-megapixel JPEGs against the sum of its irreducible parts.

    uv run python bench/bench_ingest.py [--images 300] [--runs 3]
    uv run python bench/bench_ingest.py --device cuda [--images 1024] [--runs 3]

On a GPU (--device cuda) it prints instead, from one run: index img/s; the bare model at the
precision the index chose; the CPU decode limit (one core's reference preprocessing x cores)
and the GPU decode limit (nvJPEG + resize in batches); efficiency = index / min(model, CPU +
GPU decode); and the bare ViT-L/14-at-512 stand-in (the compute class of jina-clip-v2's vision
tower) at that precision.

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
    vit_l14_at_512_config,
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    if args.device != "cpu":
        gpu_report(args)
        return

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
        ocr=False,  # the embedding engine against its parts; what OCR adds is BENCHMARKS t
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


# ---------------------------------------------------------------- on a GPU


def images_per_second(action, images: int, runs: int) -> float:
    import torch

    action()  # warm-up: kernels, allocator
    torch.cuda.synchronize()

    def synchronised() -> None:
        action()
        torch.cuda.synchronize()

    return images / median_of(timed(synchronised, runs))


def bare_forward_rate(model, size: int, batch: int, runs: int) -> float:
    """img/s of get_image_features (or the vision tower's forward) on ready tensors."""
    import torch

    dtype = next(model.parameters()).dtype
    pixels = torch.randn(batch, 3, size, size, device="cuda", dtype=dtype)
    forward = getattr(model, "get_image_features", None) or model
    with torch.inference_mode():
        return images_per_second(lambda: forward(pixel_values=pixels), batch, runs)


def gpu_decode_rate(paths: list, batch: int, runs: int) -> float:
    """nvJPEG decode + the processed-JPEG resize on the GPU, in batches of `batch`."""
    from image_search.images import ResizeSpec
    from image_search.tensor_images import decode_jpegs, resized

    datas = [path.read_bytes() for path in paths[:batch]]
    spec = ResizeSpec(960, 540, "fit", 10**9)
    return images_per_second(
        lambda: [resized(p, spec) for p in decode_jpegs(datas, "cuda")], len(datas), runs
    )


def vit_l14_at_512(dtype):
    """A random-weight ViT-L/14 vision tower at 512 px: jina-clip-v2's compute class."""
    import torch
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(vit_l14_at_512_config()).to("cuda", dtype).eval()


def gpu_report(args: argparse.Namespace) -> None:
    import torch

    from image_search.executor_local import batch_size_for

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    paths = sorted(folder.iterdir())[: args.images]
    settings = Settings(
        source_directory=folder,
        data_directory=DATA / "ingest-gpu-db",
        model_name=str(vit_b32_folder()),
        dimension=512,
        device=args.device,
        ocr=False,  # as on the CPU
    )
    embedder = Embedder.from_settings(settings)
    model = embedder.model()._model
    dtype = next(model.parameters()).dtype
    batch = batch_size_for(settings, embedder.resolved_device)
    index_runs = [index_seconds(settings, embedder, run) for run in range(args.runs)]
    index_rate = len(paths) / median_of(index_runs)
    model_rate = bare_forward_rate(model, 224, batch, 10)
    cpu_rate = 1 / median_of([timed(lambda p=p: reference_preprocess(p), 1)[0] for p in paths[:40]])
    cpu_limit = cpu_rate * cores()
    gpu_limit = gpu_decode_rate(paths, 128, 5)
    ceiling = min(model_rate, cpu_limit + gpu_limit)
    large = bare_forward_rate(vit_l14_at_512(dtype), 512, 32, 5)
    print(f"card: {torch.cuda.get_device_name()}, cores {cores()}, torch {torch.__version__}")
    print(f"images: {len(paths)} 12-MP JPEGs, batch {batch}, precision {dtype}")
    print(f"image-search index:       {index_rate:8.1f} img/s  runs: {index_runs}")
    print(f"bare ViT-B/32 forward:    {model_rate:8.1f} img/s")
    print(f"CPU decode limit:         {cpu_limit:8.1f} img/s  ({cpu_rate:.1f} x {cores()} cores)")
    print(f"GPU decode limit:         {gpu_limit:8.1f} img/s  (nvJPEG + resize, batch 128)")
    print(f"efficiency index / min(model, CPU + GPU decode): {index_rate / ceiling:.2f}")
    print(f"bare ViT-L/14 at 512 px:  {large:8.1f} img/s  (jina-clip-v2's vision class)")
