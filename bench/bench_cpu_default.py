"""What a CPU user gets with the default model's weight class: a whole `index` of 12-megapixel
JPEGs with the default settings (backend auto) against torch fp32, side by side.

    uv run python bench/bench_cpu_default.py [--images 12] [--runs 3]

jina-clip-v2's vision tower is a ViT-L/14 at 512 px. Its stand-in here has that tower with
random weights (a small text tower: an index run never uses it), published the way jina-clip-v2
publishes its graphs (one `onnx/model.onnx` with `model.onnx_data`, `model_int8.onnx`, jina's
`preprocessor_config.json`), which is what the default settings run in ONNX Runtime; torch fp32
runs the same weights as a standard CLIP model through transformers. Each variant indexes the
same JPEGs into a fresh table, model loaded beforehand, round after round (medians). Target
(issue 17): the default >= 3x torch fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from bench_onnx import index_seconds
from common import DATA, cores, jpeg_folder, median_of

from image_search.config import Settings
from image_search.models import Embedder

IMAGE_SIZE = 512
BATCH = 16
VISION = {  # ViT-L/14 (jina-clip-v2's EVA02-L tower has this size)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": IMAGE_SIZE,
    "patch_size": 14,
}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
PROJECTION = 1024


def stand_in() -> tuple[Path, Path]:
    """The same random ViT-L/14-at-512 CLIP as a standard transformers folder (torch) and in
    jina-clip-v2's published ONNX layout (the default). Built once under bench/_data."""
    torch_folder = DATA / "vit-l14-512-clip"
    jina_folder = DATA / "vit-l14-512-jina-layout"
    if (jina_folder / "onnx" / "model_int8.onnx").exists():
        return torch_folder, jina_folder
    import torch
    from tiny_models import build_tiny_clip, publish_in_jina_layout
    from transformers import CLIPConfig, CLIPModel

    build_tiny_clip(torch_folder)  # tokenizer and processor files
    (torch_folder / "model.safetensors").unlink()
    text = {**TEXT, "vocab_size": 514, "num_attention_heads": 2}
    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(text_config=text, vision_config=VISION, projection_dim=PROJECTION)
    ).eval()
    clip.save_pretrained(torch_folder)
    processor = json.loads((torch_folder / "preprocessor_config.json").read_text())
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor.update(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    (torch_folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    publish_in_jina_layout(clip, jina_folder, IMAGE_SIZE, precisions=("fp32", "int8"))
    return torch_folder, jina_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    torch_folder, jina_folder = stand_in()
    base = Settings(
        source_directory=folder,
        data_directory=DATA / "cpu-default-db",
        dimension=PROJECTION,
        device="cpu",
        batch_size=BATCH,
    )
    default = dataclasses.replace(base, model_name=str(jina_folder))  # backend, precision auto
    variants = {
        "default (auto)": Embedder.from_settings(default),
        "torch fp32": Embedder(
            str(torch_folder), "cpu", PROJECTION, backend="torch", precision="fp32"
        ),
    }
    loads = {}
    for name, embedder in variants.items():
        embedder.cache_directory = DATA / "cpu-default-models"
        started = time.perf_counter()
        embedder.model()
        loads[name] = time.perf_counter() - started

    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, embedder in variants.items():
            settings = dataclasses.replace(base, model_name=embedder.model_name)
            runs[name].append(index_seconds(settings, embedder, name.split(" ")[0]))

    rate = {name: args.images / median_of(samples) for name, samples in runs.items()}
    chosen = variants["default (auto)"]
    print(
        f"images: {args.images} 12-MP JPEGs, random ViT-L/14 at {IMAGE_SIZE} px, batch {BATCH}, "
        f"cores {cores()}, runs {args.runs} (medians); default = {chosen.backend} "
        f"{chosen.resolved_precision}"
    )
    print(f"{'':16} {'load s':>7} {'index img/s':>12} {'s/img':>7} {'x torch fp32':>13}")
    for name in variants:
        print(
            f"{name:16} {loads[name]:7.1f} {rate[name]:12.3f} {1 / rate[name]:7.2f} "
            f"{rate[name] / rate['torch fp32']:13.2f}"
        )
    ratio = rate["default (auto)"] / rate["torch fp32"]
    print(f"target: default >= 3x torch fp32 ({ratio:.2f}x): {'met' if ratio >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
