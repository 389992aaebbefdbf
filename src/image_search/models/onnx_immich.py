"""Models in Immich's ONNX layout (see immich_layout) through ONNX Runtime and the `tokenizers`
library: no torch, no transformers, none of the model's code.

Precisions: fp32 runs the published graphs where they lie; int8 runs an int8 graph the
repository brings, else one made once by ONNX Runtime's quantiser; fp16 (CUDA) one converted
once. Made graphs go to the export cache, one entry per tower, made when that tower is first
used (an index run never converts the textual graph)."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ImageSearchError
from .base import LoadOptions
from .immich_layout import (
    GRAPH,
    HUB_FILES,
    HUB_LEFT_OUT,
    INT8_GRAPHS,
    PREPROCESS_CONFIG,
    TEXTUAL,
    TOKENIZER,
    VISUAL,
    canonicalises_text,
    context_length,
    is_immich_config,
    missing_files,
)
from .onnx_export import build_once, convert, entry_key, fingerprint
from .onnx_runtime import (
    OnnxModel,
    PixelRecipe,
    TextTokenizer,
    Tower,
    pad_token_of,
)

PUNCTUATION = str.maketrans("", "", string.punctuation)


class ImmichOnnx:
    """A model laid out as Immich's machine-learning service reads it."""

    runs_remote_code: ClassVar[bool] = False

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return is_immich_config(config)

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> OnnxModel:
        folder = immich_folder(name)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        textual = folder / TEXTUAL
        tokenizer = TextTokenizer(
            textual / TOKENIZER,
            context_length(config),
            pad_token_of(textual),
            pad_to_max_length=True,  # Immich's textual graphs take exactly context_length ids
        )
        return OnnxModel(
            name,
            Tower.for_images(tower_graph(name, folder / VISUAL, options), None, device, options),
            Tower.for_texts(tower_graph(name, textual, options), None, device, options),
            PixelRecipe.open_clip(
                json.loads((folder / VISUAL / PREPROCESS_CONFIG).read_text(encoding="utf-8"))
            ),
            tokenizer,
            clean_text=canonical_text if canonicalises_text(config) else collapse_spaces,
        )


def immich_folder(name: str) -> Path:
    """The model's folder: a local one as it is, or the hub snapshot of `name` (downloaded once
    into the Hugging Face cache), checked to hold every file the layout needs."""
    folder = Path(name)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                name, allow_patterns=list(HUB_FILES), ignore_patterns=list(HUB_LEFT_OUT)
            )
        )
    missing = missing_files(folder)
    if missing:
        raise ImageSearchError(
            f"model '{name}' looks like Immich's layout (an open_clip config.json) but lacks "
            f"{', '.join(missing)}; give a folder with visual/ and textual/ as Immich's models "
            "have them"
        )
    return folder


def tower_graph(name: str, tower: Path, options: LoadOptions) -> Path | Callable[[], Path]:
    """The tower's graph in `options.precision`: the published one, or what makes it once."""
    published = tower / GRAPH
    if options.precision == "fp32":
        return published
    if options.precision == "int8":
        present = [tower / n for n in INT8_GRAPHS if (tower / n).is_file()]
        if present:
            return present[0]

    def made() -> Path:
        key = entry_key(name, fingerprint(tower), options.precision)
        entry = build_once(
            options.cache_directory / f"{key}-{tower.name}",
            lambda into: _converted(published, into, options.precision),
            f"making {name}'s {tower.name} graph in {options.precision}",
        )
        return entry / GRAPH

    return made


def _converted(graph: Path, into: Path, precision: str) -> dict[str, Any]:
    convert(graph, into / GRAPH, precision)
    return {"source": graph.name, "precision": precision}


def collapse_spaces(text: str) -> str:
    """Immich's cleaning of a query: runs of white space made one space."""
    return " ".join(text.split())


def canonical_text(text: str) -> str:
    """open_clip's `canonicalize` cleaning: no punctuation, lower case, single spaces."""
    return collapse_spaces(text).translate(PUNCTUATION).lower()
