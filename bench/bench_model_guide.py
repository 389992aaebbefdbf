"""What each model of README's guide costs per 12-megapixel photo on this machine's CPU cores.

    uv run python bench/bench_model_guide.py [--images 8] [--runs 3] [--only NAME ...]

The models are random-weight stand-ins of the same architecture, each in its own layout: the
default's (jina-clip-v2's published graphs; bench_cpu_default.py builds it) and Immich's
(bench/standin_models.py builds them), in fp32 and int8 (the default's published int8 graph;
for Immich's layout the graph image-search makes once with ONNX Runtime's dynamic quantiser).
For each, round after round (medians):

- the image tower alone, one image at a time, in a session opened as image-search opens one;
- one text query through the text tower;
- the model's own preprocessing (resize, normalise) of a prepared photo;
- the whole `index` per photo, through image-search's own index code (in process, model
  loaded, a fresh table each run);
- the index's cost per photo apart from the model: the whole `index` of the same photos with a
  tiny model in jina's layout (scan, read, hash, decode, resize, processed JPEG, database).

Every model loads through image-search's own code (Embedder, backend onnx), so each row is what
`index` runs. Every model runs in every round, one model and precision in memory at a time
(opened afresh each round, its session warmed up outside the timings), so that on a shared
machine each row sees the same spread of load. "est." adds up the index apart from the model,
the model's preprocessing and its image tower: it shows how much of a photo's cost is the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cpu_default import stand_in as default_stand_in
from bench_onnx import index_seconds
from common import DATA, cores, jpeg_folder, median_of, timed
from standin_models import STANDIN_LIST, standin_folder
from tiny_models import build_jina_layout_model

from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
from image_search.models import Embedder

PRECISIONS = ("int8", "fp32")
DEFAULT = "jina-clip-v2 (default)"
QUERY = "a dog running on the beach at sunset"
REPEAT = 3  # tower and query timings per round (their median)
SHAPES: dict[str, tuple[int, int]] = {}  # model: (dimension, input size)


@dataclass
class Candidate:
    """One model in one precision, loaded as image-search loads it."""

    label: str
    folder: Path
    precision: str
    dimension: int
    size: int

    def embedder(self) -> Embedder:
        return onnx_embedder(self.folder, self.precision, self.dimension)


def candidates(name: str) -> list[Candidate]:
    if name == DEFAULT:
        _, folder = default_stand_in()
        dimension, size = 1024, 512
    else:
        folder = standin_folder(name)
        config = json.loads((folder / "config.json").read_text())
        dimension = int(config["embed_dim"])
        size = int(config["vision_cfg"]["image_size"])
    return [Candidate(name, folder, precision, dimension, size) for precision in PRECISIONS]


def onnx_embedder(folder: Path, precision: str, dimension: int) -> Embedder:
    return Embedder(
        str(folder),
        "cpu",
        dimension,
        backend="onnx",
        precision=precision,
        cache_directory=DATA / "guide-models",
    )


def tiny_model() -> Path:
    folder = DATA / "guide-tiny-jina"
    if not (folder / "config.json").is_file():
        build_jina_layout_model(folder)
    return folder


def measure_round(
    group: list[Candidate],
    photos: list[Any],
    settings: Settings,
    samples: dict[str, list[float]],
) -> None:
    """One round of one model: each precision's preprocessing, image tower, one query and
    whole index, added to `samples`."""

    def record(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)

    for c in group:  # one precision in memory at a time
        key = f"{c.label} {c.precision}"
        embedder = c.embedder()
        model: Any = embedder.model()
        (image_input,) = model._image.input_names()
        ready = {image_input: model._pixels(photos[:1])}
        model._image.run(ready)  # the session opens and warms up outside the timings
        record(key + " prep", median_of(timed(lambda m=model: m._pixels(photos[:1]), REPEAT)))
        record(key + " tower", median_of(timed(lambda m=model, r=ready: m._image.run(r), REPEAT)))
        record(key + " query", median_of(timed(lambda m=model: m.embed_texts([QUERY]), REPEAT)))
        fresh = dataclasses.replace(settings, model_name=str(c.folder), dimension=c.dimension)
        record(key + " index", index_seconds(fresh, embedder, f"guide {c.precision}"))
        del model, embedder
        gc.collect()


def print_rows(names: list[str], samples: dict[str, list[float]], images: int) -> None:
    overhead = median_of(samples["overhead"]) / images
    for name in names:
        for precision in PRECISIONS:
            key = f"{name} {precision}"
            tower = median_of(samples[key + " tower"])
            prep = median_of(samples[key + " prep"])
            index = median_of(samples[key + " index"])
            dimension, size = SHAPES[name]
            print(
                f"{name:46} {precision:4} {dimension:4} {size:3} {tower:6.3f} "
                f"{median_of(samples[key + ' query']):6.3f} {prep:5.3f} {overhead:5.3f} "
                f"{overhead + prep + tower:5.2f} {index / images:6.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    names = [standin.name for standin in STANDIN_LIST]
    parser.add_argument("--only", nargs="*", choices=[DEFAULT, *names], default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    settings = Settings(source_directory=folder, data_directory=DATA / "guide-db", device="cpu")
    photos = [prepare_file(p, ResizeSpec.of(settings)) for p in sorted(folder.iterdir())]
    print(
        f"{args.images} 12-MP JPEGs, cores {cores()}, runs {args.runs} (medians); seconds; "
        "tower, query, prep: one image or query; rest"
        " per photo"
    )
    chosen = args.only or [DEFAULT, *names]
    tiny = tiny_model()
    tiny_embedder = onnx_embedder(tiny, "int8", 64)
    tiny_settings = dataclasses.replace(settings, model_name=str(tiny), dimension=64)
    samples: dict[str, list[float]] = {}
    for run in range(args.runs):
        samples.setdefault("overhead", []).append(
            index_seconds(tiny_settings, tiny_embedder, "guide tiny")
        )
        for name in chosen:  # one model in memory at a time, every model in every round
            group = candidates(name)
            SHAPES[name] = (group[0].dimension, group[0].size)
            measure_round(group, photos, settings, samples)
        print(f"round {run + 1} of {args.runs} done, load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'model':46} {'prec':4} {'dim':>4} {'px':>3} {'tower':>6} {'query':>6} "
        f"{'prep':>5} {'other':>5} {'est.':>5} {'index':>6}",
        flush=True,
    )
    print_rows(chosen, samples, args.images)
    print("other = the index per photo apart from the model (a tiny model's whole index);")
    print("est. = other + prep + tower; index = the whole index measured, per photo")


if __name__ == "__main__":
    main()
