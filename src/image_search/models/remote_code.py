"""Models that bring their own code (trust_remote_code) and expose encode_image / encode_text,
such as jinaai/jina-clip-v2."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .base import LoadOptions, declares_own_code, torch_dtype

# jina-clip-v2's model card encodes search queries with this task (it prefixes the query's
# instruction); documents, the images here, are encoded without one.
TEXT_QUERY_TASK = "retrieval.query"


class RemoteCodeModel:
    """A model whose config.json names its own AutoModel class (`auto_map`)."""

    runs_remote_code: ClassVar[bool] = True

    def __init__(self, name: str, model, device: str = "cpu", precision: str = "fp32") -> None:
        self.name = name
        self._model = model
        self._device = device
        self._precision = precision

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return declares_own_code(config)

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> RemoteCodeModel:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name, trust_remote_code=True).to(device).eval()
        return cls(name, model, device, options.precision)

    def _half_precision(self) -> AbstractContextManager[Any]:
        """The model's own code casts its inputs as it sees fit, so its weights stay fp32 and
        autocast runs its matrix products in the chosen precision: casting the weights could
        meet code that feeds them float32 tensors."""
        import torch

        if self._precision == "fp32":
            return nullcontext()
        return torch.autocast(self._device, dtype=torch_dtype(self._precision))

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._half_precision():
            vectors = self._model.encode_image(images, batch_size=len(images))
        return as_float32(vectors)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._half_precision():
            vectors = self._model.encode_text(texts, task=TEXT_QUERY_TASK, batch_size=len(texts))
        return as_float32(vectors)


def as_float32(vectors: Any) -> np.ndarray:
    """encode_* return numpy arrays, or tensors (bf16 ones numpy cannot take)."""
    if hasattr(vectors, "float") and hasattr(vectors, "cpu"):
        vectors = vectors.float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)
