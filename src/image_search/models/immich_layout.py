"""Immich's ONNX model layout, recognised from a model's files (what runs it is onnx_immich).

One folder per model, as Immich's machine-learning service reads it: `config.json` (open_clip's
model config: `embed_dim`, `vision_cfg`, `text_cfg` with `context_length`), `visual/model.onnx`
with `visual/preprocess_cfg.json` (`size`, `mean`, `std`, `interpolation`, `resize_mode`), and
`textual/model.onnx` with `textual/tokenizer.json` and `textual/tokenizer_config.json`. The
textual graph takes `text` (int32 ids padded to `context_length`), or `input_ids` and
`attention_mask` (the M-CLIP family). Such a model runs in ONNX Runtime only.

Nothing here imports ONNX Runtime: the backend is chosen from these facts before any model
code is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

VISUAL = "visual"
TEXTUAL = "textual"
GRAPH = "model.onnx"
PREPROCESS_CONFIG = "preprocess_cfg.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
REQUIRED_FILES = (
    f"{VISUAL}/{GRAPH}",
    f"{VISUAL}/{PREPROCESS_CONFIG}",
    f"{TEXTUAL}/{GRAPH}",
    f"{TEXTUAL}/{TOKENIZER}",
    f"{TEXTUAL}/{TOKENIZER_CONFIG}",
)
# An int8 graph beside model.onnx, where a repository brings one (the names jina-clip-v2 and
# Hugging Face's Optimum give theirs); otherwise one is made with ONNX Runtime's quantiser.
INT8_GRAPHS = ("model_int8.onnx", "model_quantized.onnx")
# What a hub download takes: the towers' folders whole (a graph over 2 GB keeps its weights in
# files of assorted names beside it), without the builds for other accelerators.
HUB_FILES = ("config.json", f"{VISUAL}/*", f"{TEXTUAL}/*")
HUB_LEFT_OUT = ("*.armnn", "*.rknn", "*/rknpu/*")
# The owner of Immich's own catalogue on the Hugging Face hub.
IMMICH_HUB_OWNER = "immich-app"
DEFAULT_CONTEXT_LENGTH = 77


def is_immich_config(config: Mapping[str, Any]) -> bool:
    """An open_clip model config, as Immich's layout keeps it in config.json."""
    return isinstance(config.get("vision_cfg"), Mapping) and isinstance(
        config.get("text_cfg"), Mapping
    )


def context_length(config: Mapping[str, Any]) -> int:
    """The number of tokens the textual graph takes (every text is padded to it)."""
    length = config["text_cfg"].get("context_length", DEFAULT_CONTEXT_LENGTH)
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"config.json: text_cfg.context_length {length!r} is not a length")
    return length


def canonicalises_text(config: Mapping[str, Any]) -> bool:
    """open_clip's `clean: canonicalize` (SigLIP's tokenizers): punctuation dropped, lower case."""
    kwargs = config["text_cfg"].get("tokenizer_kwargs")
    return isinstance(kwargs, Mapping) and kwargs.get("clean") == "canonicalize"


def missing_files(folder: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def in_immich_layout(name: str) -> bool:
    """Whether model `name` (a local folder or a hub id) is in Immich's layout, decided without
    a download: a folder by its files, a hub id by its config.json where the local hub cache
    holds it, else by its owner (Immich's catalogue)."""
    folder = Path(name)
    if folder.is_dir():
        return (folder / f"{VISUAL}/{PREPROCESS_CONFIG}").is_file()
    config = _cached_config(name)
    if config is not None:
        return is_immich_config(config)
    return name.split("/")[0] == IMMICH_HUB_OWNER


def _cached_config(name: str) -> dict[str, Any] | None:
    import json

    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a repository id
        return None
    if not isinstance(path, str):
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
