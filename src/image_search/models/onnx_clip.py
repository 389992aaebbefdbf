"""Standard Hugging Face CLIP-family models in ONNX Runtime: exported once (image and text towers
apart, any batch size) with torch and transformers, then run with neither."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from .base import LoadOptions, as_embedding_tensor, require_torch
from .hf_clip import CLIP_FAMILY
from .onnx_export import (
    IMAGE_GRAPH,
    MANIFEST,
    OPSET,
    TEXT_GRAPH,
    build_once,
    convert,
    entry_key,
    fingerprint,
    model_folder,
    read_manifest,
)
from .onnx_runtime import OnnxModel, PixelRecipe, TextTokenizer, Tower

# What an export reads from a hub repository (never the TensorFlow or Flax weights).
MODEL_FILES = ("*.json", "*.txt", "*.model", "*.safetensors")
OUTPUT = "embeddings"


class OnnxClip:
    """transformers' own CLIP-family models (CLIP_FAMILY) through ONNX Runtime."""

    runs_remote_code: ClassVar[bool] = False

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return config.get("model_type") in CLIP_FAMILY

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> OnnxModel:
        folder = model_folder(name, MODEL_FILES)
        if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch's own format
            folder = model_folder(name, (*MODEL_FILES, "*.bin"))
        key = entry_key(name, fingerprint(folder), options.precision)
        if not (options.cache_directory / key / MANIFEST).is_file():
            require_torch(
                f"model '{name}' is a Hugging Face model folder: exporting it to ONNX (once)",
                WITHOUT_TORCH,
            )
        entry = build_once(
            options.cache_directory / key,
            lambda into: export_clip(folder, into, options.precision),
            f"exporting {name} to ONNX ({options.precision})",
        )
        manifest = read_manifest(entry)
        tokenizer = TextTokenizer(
            entry / "tokenizer.json",
            manifest["text_length"],
            manifest["pad_token"],
            pad_to_max_length=manifest["pad_to_max_length"],
        )
        return OnnxModel(
            name,
            Tower.for_images(entry / IMAGE_GRAPH, OUTPUT, device, options),
            Tower.for_texts(entry / TEXT_GRAPH, OUTPUT, device, options),
            PixelRecipe.from_file(entry / "preprocessor_config.json"),
            tokenizer,
        )


# What runs without torch, for a user whose model would need an export (the export is made
# once with torch; a model exported before needs none).
WITHOUT_TORCH = (
    "choose a model that runs without it: one in Immich's ONNX layout (such as "
    "examples/tiny-immich, or Immich's models on the hub) or one that publishes its ONNX "
    "graphs, as jina-clip-v2 does"
)


def export_clip(folder: Path, into: Path, precision: str) -> dict[str, Any]:
    """Write the two towers in `precision`, the tokenizer.json and the preprocessor config
    into `into`; return the manifest that describes them."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    # Written from the processor, not copied: transformers 5 saves it in processor_config.json.
    AutoImageProcessor.from_pretrained(folder).to_json_file(into / "preprocessor_config.json")
    recipe = PixelRecipe.from_file(into / "preprocessor_config.json")
    tokenizer = AutoTokenizer.from_pretrained(folder)  # the fast one: it has a tokenizer.json
    model_type = str(model.config.model_type)
    text_config = getattr(model.config, "text_config", model.config)
    text_length = int(getattr(text_config, "max_position_embeddings", 77))
    text_inputs = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask")]
    float_graphs = into / "fp32"
    float_graphs.mkdir()
    _export_image_tower(model, float_graphs / IMAGE_GRAPH, _image_size(recipe))
    _export_text_tower(model, tokenizer, text_inputs, float_graphs / TEXT_GRAPH)
    for graph in (IMAGE_GRAPH, TEXT_GRAPH):
        convert(float_graphs / graph, into / graph, precision)
    shutil.rmtree(float_graphs)
    tokenizer.backend_tokenizer.save(str(into / "tokenizer.json"))
    return {
        "model_type": model_type,
        "precision": precision,
        "opset": OPSET,
        "text_inputs": text_inputs,
        "text_length": text_length,
        "pad_token": tokenizer.pad_token,
        # SigLIP was trained on texts padded to full length; the others pad to the longest.
        "pad_to_max_length": model_type.startswith("siglip"),
    }


def _image_size(recipe: PixelRecipe) -> tuple[int, int]:
    if recipe.crop is not None:
        return recipe.crop
    if recipe.size is not None:
        return recipe.size
    edge = recipe.shortest_edge or 224
    return edge, edge


def _export(module: Any, args: tuple, path: Path, inputs: list[str], axes: dict) -> None:
    import torch

    with warnings.catch_warnings():  # the tracer's advice is for model authors
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _export_image_tower(model: Any, path: Path, size: tuple[int, int]) -> None:
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return as_embedding_tensor(self.model.get_image_features(pixel_values=pixel_values))

    pixels = torch.randn(2, 3, *size)
    _export(ImageTower(), (pixels,), path, ["pixel_values"], {"pixel_values": {0: "batch"}})


def _export_text_tower(model: Any, tokenizer: Any, inputs: list[str], path: Path) -> None:
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            named = dict(zip(inputs, tensors, strict=True))
            return as_embedding_tensor(self.model.get_text_features(**named))

    sample = tokenizer(["a photo of a cat", "two dogs"], padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    _export(TextTower(), args, path, inputs, axes)
