"""Which adapter serves a model, decided from its config.json read as plain JSON: nothing the
model brings with it runs before the decision (and, for remote code, before it is allowed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageSearchError
from .base import ModelAdapter
from .hf_clip import CLIP_FAMILY, HuggingFaceClip
from .immich_layout import is_immich_config
from .onnx_clip import OnnxClip
from .onnx_immich import ImmichOnnx
from .onnx_published import PublishedOnnx
from .remote_code import RemoteCodeModel

# Asked in order; the first that serves a model loads it. Remote code comes first: a config
# naming its own AutoModel means that class, whatever its model_type says.
ADAPTERS: tuple[type[ModelAdapter], ...] = (RemoteCodeModel, HuggingFaceClip)
# The onnx backend: a model in Immich's layout runs its graphs; a model that brings its own
# code is run through the ONNX graphs its repository publishes (none of its code runs);
# standard ones are exported once.
ONNX_ADAPTERS: tuple[type[ModelAdapter], ...] = (ImmichOnnx, PublishedOnnx, OnnxClip)


def read_model_config(name: str) -> dict[str, Any]:
    """config.json of `name` (a local folder or a Hugging Face id, downloaded if need be),
    parsed as plain JSON: nothing of the model is imported or run."""
    folder = Path(name)
    if folder.is_dir():
        path = folder / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(name, "config.json"))
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def adapter_for(name: str, config: Mapping[str, Any], backend: str = "torch") -> type[ModelAdapter]:
    """The backend's first adapter that serves this config, or one line saying none does."""
    if backend != "onnx" and is_immich_config(config):
        raise ConfigError(
            f"model '{name}' is in Immich's ONNX layout, which runs in ONNX Runtime only: "
            "set backend to onnx (or auto)"
        )
    for adapter in ONNX_ADAPTERS if backend == "onnx" else ADAPTERS:
        if adapter.serves(config):
            return adapter
    model_type = config.get("model_type") or "(none)"
    raise ImageSearchError(
        f"model '{name}' has model type '{model_type}', which image-search cannot embed with: "
        f"choose a CLIP-family model ({', '.join(CLIP_FAMILY)}) or one whose config.json names "
        "its own AutoModel, and set the model-name key"
    )


def check_trust(name: str, adapter: type[ModelAdapter], trust_remote_code: bool) -> None:
    if adapter.runs_remote_code and not trust_remote_code:
        raise ConfigError(
            f"model '{name}' brings its own code (an auto_map in its config.json), and "
            "configuration key 'trust-remote-code' is false; set trust-remote-code to true "
            "to run that code, or choose a model without it"
        )
