"""The small interface every embedding model adapter offers, and what all of them share."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from ..errors import ConfigError

TORCH_EXTRA = "torch"
# What the torch extra brings that the torch backend and the ONNX export import.
TORCH_MODULES = ("torch", "transformers")


class EmbeddingModel(Protocol):
    """Turns images and texts into vectors of one shared space (float32, unit length)."""

    name: str

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model beyond its name and device."""

    precision: str = "fp32"
    """Resolved (never `auto`): fp32, bf16, fp16 or int8."""
    cache_directory: Path = Path(".image-search/models")
    """Where models converted for another runtime (ONNX exports) are kept."""
    threads: int | None = None
    """CPU threads for ONNX Runtime's sessions (None: one per core)."""

    @property
    def optimised_directory(self) -> Path:
        """Where ONNX graphs optimised for this computer are kept, beside the exports."""
        return self.cache_directory.parent / "optimised"


class ModelAdapter(Protocol):
    """A class that loads one family of models as an EmbeddingModel. The registry asks each
    adapter in turn whether it `serves` a model, judged from its config.json as plain data."""

    runs_remote_code: ClassVar[bool]
    """Loading runs code that the model brings with it (trust_remote_code=True)."""

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool: ...

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> EmbeddingModel: ...


def torch_installed() -> bool:
    """Is the torch extra installed? Asked without importing it (seconds)."""
    return all(importlib.util.find_spec(module) is not None for module in TORCH_MODULES)


def require_torch(purpose: str, instead: str = "use backend onnx") -> None:
    """One line naming the extra, where `purpose` needs torch and it is not installed, and
    `instead`: what does without torch (never what is already set)."""
    if not torch_installed():
        raise ConfigError(
            f"{purpose} needs torch and transformers, which the default install leaves out: "
            f"install the {TORCH_EXTRA} extra (pip install 'image-search[{TORCH_EXTRA}]'; "
            f"from a clone: uv sync --extra {TORCH_EXTRA}), or {instead}"
        )


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def as_embedding_tensor(output: Any) -> Any:
    """transformers 4.x returns a tensor from get_*_features; 5.x an output whose
    pooler_output is the embedding. Accept both so the version pin can be lifted."""
    if hasattr(output, "pooler_output") and not hasattr(output, "shape"):
        return output.pooler_output
    return output


def normalise(vectors: Any, dimension: int) -> np.ndarray:
    """float32, L2-normalised, cut to `dimension` (Matryoshka) and normalised again."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-d batch of vectors, got shape {array.shape}")
    if array.shape[1] < dimension:
        raise ConfigError(
            f"configuration key 'dimension' is {dimension}, but the model makes "
            f"{array.shape[1]}-dimensional vectors; set dimension to {array.shape[1]} or less"
        )
    array = array[:, :dimension]
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def declares_own_code(config: Mapping[str, Any]) -> bool:
    """A config.json that names its own AutoModel class (`auto_map`), as jina-clip-v2's does."""
    auto_map = config.get("auto_map")
    return isinstance(auto_map, Mapping) and "AutoModel" in auto_map
