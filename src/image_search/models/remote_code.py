"""Models that bring their own code (trust_remote_code) and expose encode_image / encode_text,
such as jinaai/jina-clip-v2."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from PIL import Image

# jina-clip-v2's model card encodes search queries with this task (it prefixes the query's
# instruction); documents, the images here, are encoded without one.
TEXT_QUERY_TASK = "retrieval.query"


class RemoteCodeModel:
    """A model whose config.json names its own AutoModel class (`auto_map`)."""

    runs_remote_code: ClassVar[bool] = True

    def __init__(self, name: str, model) -> None:
        self.name = name
        self._model = model

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        auto_map = config.get("auto_map")
        return isinstance(auto_map, Mapping) and "AutoModel" in auto_map

    @classmethod
    def load(cls, name: str, device: str) -> RemoteCodeModel:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name, trust_remote_code=True).to(device).eval()
        return cls(name, model)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vectors = self._model.encode_image(images, batch_size=len(images))
        return np.asarray(vectors, dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vectors = self._model.encode_text(texts, task=TEXT_QUERY_TASK, batch_size=len(texts))
        return np.asarray(vectors, dtype=np.float32)
