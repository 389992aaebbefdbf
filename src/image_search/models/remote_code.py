"""Models that bring their own code (trust_remote_code) and expose encode_image / encode_text,
such as jinaai/jina-clip-v2."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .base import LoadOptions, as_embedding_tensor, declares_own_code, torch_dtype
from .onnx_runtime import PixelRecipe
from .tensor_pixels import model_pixels, to_pil

log = logging.getLogger(__name__)

# jina-clip-v2's model card encodes search queries with this task (it prefixes the query's
# instruction); documents, the images here, are encoded without one.
TEXT_QUERY_TASK = "retrieval.query"


class RemoteCodeModel:
    """A model whose config.json names its own AutoModel class (`auto_map`)."""

    runs_remote_code: ClassVar[bool] = True
    # Also takes CHW uint8 tensors (the GPU path): they are resized and normalised on their
    # device as the model's preprocessor_config.json says, and go to get_image_features
    # without a round trip through Pillow.
    accepts_tensors: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        model,
        device: str = "cpu",
        precision: str = "fp32",
        pixels: PixelRecipe | None = None,
    ) -> None:
        self.name = name
        self._model = model
        self._device = device
        self._precision = precision
        self._pixels = pixels if hasattr(model, "get_image_features") else None

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return declares_own_code(config)

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> RemoteCodeModel:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name, trust_remote_code=True).to(device).eval()
        return cls(name, model, device, options.precision, pixel_recipe_of(name))

    def _half_precision(self) -> AbstractContextManager[Any]:
        """The model's own code casts its inputs as it sees fit, so its weights stay fp32 and
        autocast runs its matrix products in the chosen precision: casting the weights could
        meet code that feeds them float32 tensors."""
        import torch

        if self._precision == "fp32":
            return nullcontext()
        return torch.autocast(self._device, dtype=torch_dtype(self._precision))

    def embed_images(self, images: list[Image.Image] | list[Any]) -> np.ndarray:
        import torch

        if images and not isinstance(images[0], Image.Image):
            if self._pixels is not None:
                try:
                    return self._embed_tensors(images)
                except (TypeError, AttributeError) as exc:  # its code differs from jina's
                    log.warning(
                        "%s: preprocessing on the GPU failed (%s); using Pillow", self.name, exc
                    )
                    self._pixels = None
            images = [to_pil(image) for image in images]
        with torch.inference_mode(), self._half_precision():
            vectors = self._model.encode_image(images, batch_size=len(images))
        return as_float32(vectors)

    def _embed_tensors(self, images: list[Any]) -> np.ndarray:
        """What encode_image does (its processor, then get_image_features), on the tensors'
        device. The vectors come back unnormalised: Embedder normalises every model's."""
        import torch

        assert self._pixels is not None
        pixel_values = model_pixels(images, self._pixels).to(self._device)
        with torch.inference_mode(), self._half_precision():
            features = self._model.get_image_features(pixel_values=pixel_values)
        return as_float32(as_embedding_tensor(features))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._half_precision():
            vectors = self._model.encode_text(texts, task=TEXT_QUERY_TASK, batch_size=len(texts))
        return as_float32(vectors)


def pixel_recipe_of(name: str) -> PixelRecipe | None:
    """The model's image preprocessing from its preprocessor_config.json (a folder's, or the
    hub's, cached by the load just done); None where there is none or it is not understood,
    and then tensors go through Pillow to encode_image."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
        return PixelRecipe.from_file(Path(path)) if path else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("no tensor preprocessing for %s: %s", name, exc)
        return None


def as_float32(vectors: Any) -> np.ndarray:
    """encode_* return numpy arrays, or tensors (bf16 ones numpy cannot take)."""
    if hasattr(vectors, "float") and hasattr(vectors, "cpu"):
        vectors = vectors.float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)
