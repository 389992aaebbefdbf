"""Models that bring their own code but also publish ONNX graphs (jina-clip-v2): run through
those graphs, so none of the model's code runs.

The layout, as jina-clip-v2's model card describes it: `onnx/model.onnx` (+ `model.onnx_data`),
`onnx/model_fp16.onnx`, `onnx/model_int8.onnx` (or `model_quantized.onnx`); one graph with the
inputs `input_ids` and `pixel_values` and the outputs `text_embeddings`, `image_embeddings`
and their l2-normalised forms `l2norm_text_embeddings`, `l2norm_image_embeddings`; its
`tokenizer.json` and its `preprocessor_config.json` beside them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ImageSearchError
from .base import LoadOptions, declares_own_code
from .onnx_export import (
    IMAGE_GRAPH,
    TEXT_GRAPH,
    build_once,
    entry_key,
    fingerprint,
    model_folder,
)
from .onnx_runtime import (
    OnnxModel,
    PixelRecipe,
    TextTokenizer,
    Tower,
    pad_token_of,
)

GRAPHS = {
    "fp32": ("onnx/model.onnx",),
    "fp16": ("onnx/model_fp16.onnx",),
    "int8": ("onnx/model_int8.onnx", "onnx/model_quantized.onnx"),
}
SUPPORT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
IMAGE_OUTPUT = "l2norm_image_embeddings"
TEXT_OUTPUT = "l2norm_text_embeddings"
# jina-clip-v2's model card: search queries carry this instruction, images none.
QUERY_INSTRUCTION = "Represent the query for retrieving evidence documents: "
# Beyond this a tokenizer's model_max_length is transformers' "no limit" placeholder.
LONGEST_TEXT = 8192


class PublishedOnnx:
    """A model whose config.json names its own AutoModel, through its published ONNX graph."""

    runs_remote_code: ClassVar[bool] = False

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return declares_own_code(config)

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> OnnxModel:
        folder, graph = published_graph(name, options.precision)
        external = graph.with_name(graph.name + "_data")
        files = [graph, external] if external.is_file() else [graph]
        key = entry_key(name, fingerprint(folder, files), options.precision)
        entry = build_once(
            options.cache_directory / key,
            lambda into: split_towers(graph, into),
            f"splitting {name}'s {graph.name} into an image and a text graph",
        )
        # Graphs whose weights stay in the repository's model.onnx_data are opened with
        # that folder; graphs with their weights inside need none.
        weights = graph.parent if external.is_file() else None
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        prefix = QUERY_INSTRUCTION if config.get("model_type") == "jina_clip" else ""
        return OnnxModel(
            name,
            Tower.for_images(entry / IMAGE_GRAPH, IMAGE_OUTPUT, device, options, weights),
            Tower.for_texts(entry / TEXT_GRAPH, TEXT_OUTPUT, device, options, weights),
            PixelRecipe.from_file(folder / "preprocessor_config.json"),
            TextTokenizer(folder / "tokenizer.json", text_length(folder), pad_token_of(folder)),
            query_prefix=prefix,
        )


def published_graph(name: str, precision: str) -> tuple[Path, Path]:
    """The model's folder and its graph for `precision` (only that one is downloaded)."""
    candidates = GRAPHS[precision]
    for candidate in candidates:
        patterns = [*SUPPORT_FILES, candidate, candidate + "_data"]
        try:
            folder = model_folder(name, patterns)
        except OSError:
            continue
        if (folder / candidate).is_file():
            return folder, folder / candidate
    raise ImageSearchError(
        f"model '{name}' brings its own code and publishes no ONNX graph for precision "
        f"{precision} (looked for {', '.join(candidates)}); set precision to another one, or "
        "backend to torch"
    )


def split_towers(graph: Path, into: Path) -> dict[str, Any]:
    """The image and the text tower cut out of the one published graph, so that an image
    needs no dummy text and a text no dummy image. The weights are not loaded: a graph whose
    weights lie in an external file keeps pointing at them."""
    import onnx
    from onnx.utils import Extractor

    extractor = Extractor(onnx.load(str(graph), load_external_data=False))
    for target, inputs, output in (
        (IMAGE_GRAPH, ["pixel_values"], IMAGE_OUTPUT),
        (TEXT_GRAPH, ["input_ids"], TEXT_OUTPUT),
    ):
        onnx.save(extractor.extract_model(inputs, [output]), str(into / target))
    return {"source": graph.name}


def text_length(folder: Path) -> int:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    length = config.get("model_max_length", 512)
    return int(length) if isinstance(length, int) and 0 < length <= LONGEST_TEXT else 512
