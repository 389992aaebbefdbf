"""What each model of README's guide costs per 12-megapixel photo on this machine's CPU cores.

    uv run python bench/bench_model_guide.py [--images 8] [--runs 3] [--only NAME ...]

The models are random-weight stand-ins of the same architecture, each in its own layout: the
default's (jina-clip-v2's published graphs; bench_cpu_default.py builds it) and Immich's
(bench/standin_models.py builds them), in fp32 and int8 (ONNX Runtime's dynamic quantisation,
as image-search makes it: onnx_export.quantise_int8). For each, round after round (medians):

- the image tower alone, one image at a time, in a session opened as image-search opens one;
- one text query through the text tower;
- the model's own preprocessing (resize, normalise) of a prepared photo;
- the whole `index` per photo, through image-search's own index code (in process, model
  loaded, a fresh table each run), where this build loads the layout;
- the index's cost per photo apart from the model: the whole `index` of the same photos with a
  tiny model in jina's layout (scan, read, hash, decode, resize, processed JPEG, database).

A model the index cannot load yet gets an estimate instead: that cost apart from the model, plus
its preprocessing, plus its image tower. The default's row shows both, which tells how close
the estimate comes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_cpu_default import stand_in as default_stand_in
from bench_onnx import index_seconds
from common import DATA, cores, jpeg_folder, median_of, timed
from standin_models import STANDIN_LIST, standin_folder
from tiny_models import build_jina_layout_model

from image_search.config import Settings
from image_search.errors import ImageSearchError
from image_search.images import ResizeSpec, prepare_file
from image_search.models import Embedder
from image_search.models.onnx_export import quantise_int8
from image_search.models.onnx_runtime import PixelRecipe, TextTokenizer, Tower

PRECISIONS = ("int8", "fp32")
DEFAULT = "jina-clip-v2 (default)"
QUERY = "a dog running on the beach at sunset"
REPEAT = 3  # tower and query timings per round (their median)


@dataclass
class Candidate:
    """One model in one precision, as the benchmark runs it."""

    label: str
    folder: Path
    precision: str
    dimension: int
    size: int
    image: Tower
    text: Tower
    pixels: PixelRecipe
    query: dict[str, np.ndarray]
    image_input: str
    embedder: Embedder | None = None  # where image-search's own loading made the towers


def default_candidates() -> list[Candidate]:
    """The default model's stand-in, through image-search's own loading of jina's layout."""
    _, folder = default_stand_in()
    found = []
    for precision in PRECISIONS:
        embedder = onnx_embedder(folder, precision, 1024)
        model: Any = embedder.model()
        query = model._tokenizer([model._query_prefix + QUERY])
        found.append(
            Candidate(
                DEFAULT,
                folder,
                precision,
                1024,
                512,
                model._image,
                model._text,
                model._pixels,
                query,
                "pixel_values",
                embedder,
            )
        )
    return found


def immich_candidates(name: str) -> list[Candidate]:
    """A stand-in in Immich's layout, its graphs opened directly (fp32 as published, int8
    quantised once here as image-search quantises)."""
    folder = standin_folder(name)
    config = json.loads((folder / "config.json").read_text())
    preprocess = json.loads((folder / "visual" / "preprocess_cfg.json").read_text())
    size = preprocess["size"][0] if isinstance(preprocess["size"], list) else preprocess["size"]
    pixels = PixelRecipe.from_config({**preprocess, "size": size})
    context = config["text_cfg"]["context_length"]
    tokenizer = TextTokenizer(folder / "textual" / "tokenizer.json", context, "<pad>", True)
    tokens = tokenizer([QUERY])
    query = {
        "text": tokens["input_ids"].astype(np.int32),
        "input_ids": tokens["input_ids"].astype(np.int32),
        "attention_mask": tokens["attention_mask"].astype(np.int32),
    }
    found = []
    for precision in PRECISIONS:
        visual, textual = graphs(folder, name, precision)
        found.append(
            Candidate(
                name,
                folder,
                precision,
                int(config["embed_dim"]),
                size,
                Tower(visual, "embedding", "cpu"),
                Tower(textual, "embedding", "cpu"),
                pixels,
                query,
                "image",
            )
        )
    return found


def graphs(folder: Path, name: str, precision: str) -> tuple[Path, Path]:
    visual, textual = folder / "visual" / "model.onnx", folder / "textual" / "model.onnx"
    if precision == "fp32":
        return visual, textual
    into = DATA / "guide-int8" / name
    into.mkdir(parents=True, exist_ok=True)
    for source in (visual, textual):
        target = into / f"{source.parent.name}.onnx"
        if not target.is_file():
            quantise_int8(source, target)
    return into / "visual.onnx", into / "textual.onnx"


def onnx_embedder(folder: Path, precision: str, dimension: int) -> Embedder:
    return Embedder(
        str(folder),
        "cpu",
        dimension,
        backend="onnx",
        precision=precision,
        cache_directory=DATA / "guide-models",
    )


def whole_index(candidate: Candidate, settings: Settings) -> Callable[[], float] | None:
    """The whole index of the photos with this model, or None where this build cannot load
    the model's layout."""
    embedder = candidate.embedder or onnx_embedder(
        candidate.folder, candidate.precision, candidate.dimension
    )
    try:
        embedder.model()
    except ImageSearchError:
        return None
    fresh = dataclasses.replace(
        settings, model_name=str(candidate.folder), dimension=candidate.dimension
    )
    return lambda: index_seconds(fresh, embedder, f"guide {candidate.precision}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    names = [standin.name for standin in STANDIN_LIST]
    parser.add_argument("--only", nargs="*", choices=[DEFAULT, *names], default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chosen = args.only or [DEFAULT, *names]

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    settings = Settings(source_directory=folder, data_directory=DATA / "guide-db", device="cpu")
    photos = [prepare_file(p, ResizeSpec.of(settings)) for p in sorted(folder.iterdir())]
    candidates = [
        c
        for name in chosen
        for c in (default_candidates() if name == DEFAULT else immich_candidates(name))
    ]
    tiny = (
        build_jina_layout_model(DATA / "guide-tiny-jina")
        if not (DATA / "guide-tiny-jina" / "config.json").is_file()
        else DATA / "guide-tiny-jina"
    )
    tiny_embedder = onnx_embedder(tiny, "int8", 64)
    tiny_settings = dataclasses.replace(settings, model_name=str(tiny), dimension=64)
    indexers = {id(c): whole_index(c, settings) for c in candidates}

    samples: dict[str, list[float]] = {}

    def record(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)

    for _ in range(args.runs):
        record("overhead", index_seconds(tiny_settings, tiny_embedder, "guide tiny"))
        for c in candidates:
            key = f"{c.label} {c.precision}"
            ready = c.pixels(photos[:1])
            record(key + " pixels", median_of(timed(lambda c=c: c.pixels(photos[:1]), REPEAT)))
            image = {c.image_input: ready}
            record(key + " tower", median_of(timed(lambda c=c, i=image: c.image.run(i), REPEAT)))
            record(key + " query", median_of(timed(lambda c=c: c.text.run(c.query), REPEAT)))
            if (indexer := indexers[id(c)]) is not None:
                record(key + " index", indexer())

    per_photo = args.images
    overhead = median_of(samples["overhead"]) / per_photo
    print(
        f"{args.images} 12-MP JPEGs, cores {cores()}, runs {args.runs} (medians); seconds per "
        f"photo; index apart from the model: {overhead:.3f} s per photo (tiny model's index)"
    )
    print(
        f"{'model':46} {'prec':4} {'dim':>4} {'px':>3} {'tower':>6} {'query':>6} "
        f"{'prep':>5} {'estimate':>8} {'index':>6}"
    )
    for c in candidates:
        key = f"{c.label} {c.precision}"
        tower = median_of(samples[key + " tower"])
        pixels = median_of(samples[key + " pixels"])
        index = samples.get(key + " index")
        measured = f"{median_of(index) / per_photo:6.2f}" if index else f"{'-':>6}"
        print(
            f"{c.label:46} {c.precision:4} {c.dimension:4} {c.size:3} {tower:6.3f} "
            f"{median_of(samples[key + ' query']):6.3f} {pixels:5.3f} "
            f"{overhead + pixels + tower:8.2f} {measured}"
        )
    print("estimate = index apart from the model + prep (the model's preprocessing) + tower;")
    print("index = whole index measured (- where this build cannot load the layout)")


if __name__ == "__main__":
    main()
