"""Standard Hugging Face CLIP-family models (CLIP, SigLIP, ...) through AutoModel/AutoProcessor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .base import LoadOptions, as_embedding_tensor, torch_dtype

# Model types of transformers' own dual encoders whose get_image_features /
# get_text_features return one vector per input in a shared space.
CLIP_FAMILY = ("clip", "siglip", "siglip2", "chinese_clip", "altclip")


class HuggingFaceClip:
    """transformers' own CLIP-family models (CLIP_FAMILY): get_image_features /
    get_text_features and an AutoProcessor, no remote code."""

    runs_remote_code: ClassVar[bool] = False
    # Also takes CHW uint8 tensors (the GPU path): the model's own fast processor then
    # resizes and normalises them on the model's device.
    accepts_tensors: ClassVar[bool] = True

    def __init__(self, name: str, model, processor, device: str) -> None:
        self.name = name
        self._model = model
        self._processor = processor
        self._device = device

    @classmethod
    def serves(cls, config: Mapping[str, Any]) -> bool:
        return config.get("model_type") in CLIP_FAMILY

    @classmethod
    def load(cls, name: str, device: str, options: LoadOptions) -> HuggingFaceClip:
        from transformers import AutoModel, AutoProcessor

        dtype = torch_dtype(options.precision)
        model = AutoModel.from_pretrained(name).to(device=device, dtype=dtype).eval()
        # The fast (torchvision) image processor: the PIL one is the slow path.
        processor = AutoProcessor.from_pretrained(name, use_fast=True)
        return cls(name, model, processor, device)

    def embed_images(self, images: list[Image.Image] | list[Any]) -> np.ndarray:
        import torch

        on_device = {} if self._device == "cpu" else {"device": self._device}
        inputs = self._processor(images=images, return_tensors="pt", **on_device)
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.inference_mode():
            features = self._model.get_image_features(**inputs)
        return as_embedding_tensor(features).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self._processor(
            text=texts,
            return_tensors="pt",
            # SigLIP was trained on texts padded to full length; others pad to the longest.
            padding="max_length" if self._model.config.model_type.startswith("siglip") else True,
            truncation=True,
            max_length=self._text_length(),
        ).to(self._device)
        with torch.inference_mode():
            features = self._model.get_text_features(**inputs)
        return as_embedding_tensor(features).float().cpu().numpy()

    def _text_length(self) -> int:
        config = getattr(self._model.config, "text_config", self._model.config)
        return int(getattr(config, "max_position_embeddings", 77))
