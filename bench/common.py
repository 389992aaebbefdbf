"""Shared pieces of the benchmarks: data they generate themselves, the model, the references."""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
sys.path.insert(0, str(ROOT / "tests"))

TWELVE_MP = (4000, 3000)
PROCESSED = (960, 540)
MODEL_INPUT = 224


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def vit_b32_folder() -> Path:
    """CLIP ViT-B/32 with random weights: the real model's compute, no download."""
    folder = DATA / "clip-vit-b-32-random"
    if (folder / "config.json").exists():
        return folder
    import torch
    from tiny_models import build_tiny_clip
    from transformers import CLIPConfig, CLIPModel

    build_tiny_clip(folder)  # tokenizer and processor files
    (folder / "model.safetensors").unlink()
    config = CLIPConfig()
    config.text_config.vocab_size = 514
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor.update(
        size={"shortest_edge": MODEL_INPUT}, crop_size={"height": MODEL_INPUT, "width": MODEL_INPUT}
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def vit_l14_at_512_config() -> Any:
    """The vision config of a ViT-L/14 at 512 px: jina-clip-v2's vision compute class."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=512,
        projection_dim=1024,
    )


def photo_like(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth colour field with noise: compresses like a photo (about 2-4 MB at 12 MP)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 12, size=(size[1], size[0], 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8))


def jpeg_folder(name: str, count: int, size: tuple[int, int] = TWELVE_MP) -> Path:
    """`count` JPEGs of `size`, generated once and kept under bench/_data."""
    folder = DATA / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo-{i:05d}.jpg"
        if not path.exists():
            photo_like(i, size).save(path, quality=90)
    return folder


def reference_preprocess(path: Path) -> Image.Image:
    """The irreducible preprocessing: draft decode, fit 960x540, JPEG encode, model resize."""
    with Image.open(path) as image:
        image.draft("RGB", PROCESSED)
        image = image.convert("RGB")
        image.thumbnail(PROCESSED, Image.Resampling.BICUBIC)
    image.save(io.BytesIO(), format="JPEG", quality=90)
    return image.resize((MODEL_INPUT, MODEL_INPUT), Image.Resampling.BICUBIC)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def clustered_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    """Unit vectors in clusters of about 100 (photos of a subject), as float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 100), dimension)).astype(np.float32)
    members = centres[rng.integers(0, len(centres), count)]
    vectors = members + 0.6 * rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench_file_name(row: int) -> str:
    return f"v{row:07d}.jpg"


def bench_row_of(file_name: str) -> int:
    """The row number a generated file name stands for (bench_file_name's inverse)."""
    return int(file_name[1:].split(".")[0])


def copy_vectors(
    store: Any,
    vectors: Sequence[np.ndarray],
    first: int = 0,
    kind: str = "vector",
    taken_at: datetime | None = None,
) -> None:
    """Rows for `vectors`, numbered from `first`, into the store's table by binary COPY (the
    caller recounts): /bench/v0000042.jpg, modified at 42 ns (lower rows are older), taken at
    `taken_at`. `kind`: the table's vector type, `vector` or `halfvec`."""
    from pgvector import HalfVector

    columns = (
        "file_path, file_name, path_hash, content_hash, file_size, file_mtime_ns, "
        "processed_path, model_name, embedding, taken_at"
    )
    types = ["text", "text", "text", "text", "int8", "int8", "text", "text", kind, "timestamp"]
    copy_sql = f'COPY "{store.table}" ({columns}) FROM STDIN WITH (FORMAT BINARY)'
    with (
        store.database.connection() as conn,
        conn.cursor() as cursor,
        cursor.copy(copy_sql) as copy,
    ):
        copy.set_types(types)
        for row, vector in enumerate(vectors, start=first):
            name = bench_file_name(row)
            embedding = HalfVector(vector) if kind == "halfvec" else vector  # its own dumper
            copy.write_row(
                [f"/bench/{name}", name, f"p{row}", f"c{row}", 1, row, "", "b", embedding, taken_at]
            )
