"""Embedding models: pick the adapter for a model id or folder, load it only when needed."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import ImageSearchError, one_line
from .base import EmbeddingModel, normalise, resolve_device
from .hf_clip import HuggingFaceClip
from .remote_code import RemoteCodeModel

log = logging.getLogger(__name__)

__all__ = ["EmbeddingModel", "Embedder", "load_model", "normalise", "resolve_device"]


def uses_remote_code(name: str) -> bool:
    """A model whose config names its own classes (`auto_map`) brings its own code."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name, trust_remote_code=True)
    return "AutoModel" in (getattr(config, "auto_map", None) or {})


def load_model(name: str, device: str) -> EmbeddingModel:
    """Load `name` (a Hugging Face id or a local folder) on `device` (auto|cpu|cuda|mps)."""
    resolved = resolve_device(device)
    try:
        adapter = RemoteCodeModel if uses_remote_code(name) else HuggingFaceClip
        return adapter.load(name, resolved)
    except (OSError, ValueError, ImportError, KeyError, AttributeError) as exc:
        raise ImageSearchError(
            f"cannot load model '{name}': {one_line(exc)}. Check the model-name key "
            "(a Hugging Face id reachable from here, or a local folder)"
        ) from exc


class Embedder:
    """Normalised embeddings of a fixed dimension from a model loaded on first use,
    so that a run with nothing new to embed never loads it."""

    def __init__(
        self,
        model_name: str,
        device: str,
        dimension: int,
        loader: Callable[[str, str], EmbeddingModel] = load_model,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.dimension = dimension
        self._loader = loader
        self._model: EmbeddingModel | None = None
        self._lock = threading.Lock()

    @functools.cached_property
    def resolved_device(self) -> str:
        """The device the model runs on: `auto` and absent accelerators resolved (once)."""
        return resolve_device(self.device)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> EmbeddingModel:
        with self._lock:  # two web requests must not load it twice
            if self._model is None:
                started = time.perf_counter()
                self._model = self._loader(self.model_name, self.resolved_device)
                log.info(
                    "loaded model %s in %.1f s", self.model_name, time.perf_counter() - started
                )
            return self._model

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return normalise(self.model().embed_images(images), self.dimension)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return normalise(self.model().embed_texts(texts), self.dimension)
