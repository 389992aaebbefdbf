"""What reading the words in photos (the `ocr` key) adds to a whole `index` of 12-megapixel
JPEGs with the default model's weight class, side by side with ocr off.

    uv run python bench/bench_ocr_cost.py [--images 16] [--runs 3]

The model is bench_cpu_default.py's stand-in for jina-clip-v2 (a random ViT-L/14 at 512 px in
jina-clip-v2's published ONNX layout: what the default settings run, onnx int8). Half of the
photos carry a sign with a line of text, half none. Each variant indexes the same JPEGs into a
fresh table (the stored words emptied first, so that every photo is read), model loaded
beforehand, round after round (medians). Also OCR alone on the processed images, with and
without text, as index runs it and in bench_ocr_quality.py's other variants (the detector at
640 px, the direction classifier), taking turns on each photo. Target (issue 26): ocr on by
default only if it adds <= 20 % to the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import time

from bench_cpu_default import PROJECTION, stand_in
from bench_ocr_quality import WithClassifier
from bench_onnx import index_seconds
from common import DATA, TWELVE_MP, cores, photo_like
from PIL import ImageDraw, ImageFont

from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
from image_search.models import Embedder
from image_search.ocr import TextReader
from image_search.store import open_store
from image_search.store.words import WORDS_TABLE

BATCH = 16
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SIGNS = ["INVOICE 2023", "Platform 9", "Coffee Menu", "No parking", "Bakery open daily",
         "Exit only", "Total 45.90 EUR", "Welcome home"]


def photos(count: int) -> list:
    """`count` 12-MP JPEGs, every other one with a sign (made once under bench/_data)."""
    folder = DATA / f"ocr-cost-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        if path.exists():
            continue
        image = photo_like(1000 + i, TWELVE_MP)
        if i % 2 == 0:
            rng = random.Random(i)
            draw = ImageDraw.Draw(image)
            font = ImageFont.truetype(FONT, rng.choice([120, 200, 320]))
            text = SIGNS[(i // 2) % len(SIGNS)]
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            x, y = rng.randint(100, max(101, 3800 - right)), rng.randint(100, 2500)
            draw.rectangle((x - 60, y - 60, x + right + 60, y + bottom + 60), fill=(245, 245, 235))
            draw.text((x, y), text, font=font, fill=(15, 15, 15))
        image.save(path, quality=90)
    return sorted(folder.iterdir())


def forget_words(settings: Settings) -> None:
    with open_store(settings) as store, store.database.connection() as conn:
        if conn.execute("SELECT to_regclass(%s)", [WORDS_TABLE]).fetchone()[0]:
            conn.execute(f"DELETE FROM {WORDS_TABLE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    paths = photos(args.images)
    import torch

    with torch.no_grad():  # building the stand-in: its export needs no gradients (nor memory)
        _, jina_folder = stand_in()
    base = Settings(
        source_directory=paths[0].parent,
        data_directory=DATA / "ocr-cost-db",
        model_name=str(jina_folder),
        dimension=PROJECTION,
        device="cpu",
        batch_size=BATCH,
    )
    embedder = Embedder.from_settings(base)
    embedder.cache_directory = DATA / "cpu-default-models"
    embedder.model()

    runs: dict[str, list[float]] = {"ocr off": [], "ocr on": []}
    for _ in range(args.runs):
        for name in runs:
            settings = dataclasses.replace(base, ocr=name == "ocr on")
            forget_words(settings)
            runs[name].append(index_seconds(settings, embedder, name.replace(" ", "_")))

    spec = ResizeSpec.of(base)
    prepared = [prepare_file(path, spec) for path in paths]
    readers = {
        "default": TextReader(),
        "det640": TextReader(detect_side=640),
        "classifier": WithClassifier(),
    }
    for reader in readers.values():
        reader.read(prepared[0])
    alone = {(name, text): [] for name in readers for text in (True, False)}
    for _ in range(args.runs):  # the readers take turns on each photo
        for i, image in enumerate(prepared):
            for name, reader in readers.items():
                started = time.perf_counter()
                reader.read(image)
                alone[name, i % 2 == 0].append(time.perf_counter() - started)

    off, on = statistics.median(runs["ocr off"]), statistics.median(runs["ocr on"])
    print(
        f"images: {args.images} 12-MP JPEGs (half with a sign), processed {spec.width}x"
        f"{spec.height}, random ViT-L/14 at 512 px ({embedder.backend} "
        f"{embedder.resolved_precision}), batch {BATCH}, cores {cores()}, runs {args.runs}"
    )
    print(f"{'':8} {'index s':>8} {'s/img':>6}")
    for name, seconds in (("ocr off", off), ("ocr on", on)):
        print(f"{name:8} {seconds:8.1f} {seconds / args.images:6.2f}")
    added = on / off - 1
    print(f"ocr adds {added:+.1%} to the index run")
    print("OCR alone per photo (medians, s): reader, with text, without")
    for name in readers:
        print(
            f"  {name:10} {statistics.median(alone[name, True]):6.3f} "
            f"{statistics.median(alone[name, False]):6.3f}"
        )
    print(f"target: on by default only if it adds <= 20 % ({added:.1%}): "
          f"{'on' if added <= 0.2 else 'off'}")


if __name__ == "__main__":
    main()
