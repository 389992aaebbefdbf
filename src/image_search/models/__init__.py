"""Embedding models: pick the adapter for a model id or folder, load it only when needed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import Settings
from ..errors import ImageSearchError, one_line
from .base import EmbeddingModel, LoadOptions, ModelAdapter, normalise, require_torch
from .hub import check_hub_for
from .precision import Decision, decide, decide_for
from .registry import ADAPTERS, ONNX_ADAPTERS, adapter_for, check_trust, read_model_config
from .tensor_pixels import to_pil

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTERS",
    "Decision",
    "EmbeddingModel",
    "Embedder",
    "LoadOptions",
    "ModelAdapter",
    "ONNX_ADAPTERS",
    "adapter_for",
    "load_model",
    "normalise",
    "read_model_config",
]

Loader = Callable[[str, str], EmbeddingModel]


def load_model(
    name: str,
    device: str,
    *,
    trust_remote_code: bool = True,
    backend: str = "torch",
    options: LoadOptions | None = None,
) -> EmbeddingModel:
    """Load `name` (a Hugging Face id or a local folder) on `device` (cpu, cuda or mps, as
    precision.decide decided it) with the `backend`'s adapter that serves it, in
    `options.precision` (fp32 by default). Code the model brings runs only if
    `trust_remote_code`."""
    if backend == "torch":
        require_torch("backend torch")
    options = options or LoadOptions()
    check_hub_for(name)
    try:
        adapter = adapter_for(name, read_model_config(name), backend)
        check_trust(name, adapter, trust_remote_code)
        return adapter.load(name, device, options)
    except (OSError, ValueError, ImportError, KeyError, AttributeError) as exc:
        raise ImageSearchError(
            f"cannot load model '{name}': {one_line(exc)}. Check the model-name key "
            "(a Hugging Face id reachable from here, or a local folder)"
        ) from exc


class Embedder:
    """Normalised embeddings of a fixed dimension from a model loaded on first use,
    so that a run with nothing new to embed never loads it. It runs as its `decision` says
    (backend, precision, device); by default decided from the arguments alone."""

    def __init__(
        self,
        model_name: str,
        device: str,
        dimension: int,
        loader: Loader | None = None,
        *,
        trust_remote_code: bool = True,
        backend: str = "torch",
        precision: str = "auto",
        cache_directory: Path | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.dimension = dimension
        self.trust_remote_code = trust_remote_code
        self.precision = precision
        self.decision = decision or decide(backend, precision, device)
        self.cache_directory = cache_directory or Settings().data_directory / "models"
        self.threads: int | None = None  # ONNX Runtime's CPU threads (None: one per core)
        self._loader = loader or self._load
        self._model: EmbeddingModel | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, decision: Decision | None = None) -> Embedder:
        """The settings' model, run as `decision` says; by default decided from the settings
        alone, as for a new table (the command line decides against the table: see
        cli.decision_for)."""
        decision = decision or decide_for(settings)
        return cls(
            settings.model_name,
            settings.device,
            settings.dimension,
            trust_remote_code=settings.trust_remote_code,
            precision=settings.precision,
            cache_directory=settings.data_directory / "models",
            decision=decision,
        )

    @property
    def backend(self) -> str:
        return self.decision.backend

    @property
    def resolved_device(self) -> str:
        """The device the model runs on: `auto` and absent accelerators resolved."""
        return self.decision.device

    @property
    def resolved_precision(self) -> str:
        """The precision the model runs in on that device: `auto` resolved."""
        return self.decision.precision

    def _load(self, name: str, device: str) -> EmbeddingModel:
        options = LoadOptions(self.resolved_precision, self.cache_directory, self.threads)
        return load_model(
            name,
            device,
            trust_remote_code=self.trust_remote_code,
            backend=self.backend,
            options=options,
        )

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> EmbeddingModel:
        with self._lock:  # two web requests must not load it twice
            if self._model is None:
                for warning in self.decision.warnings:  # told once: this model loads once
                    log.warning(warning)
                started = time.perf_counter()
                self._model = self._loader(self.model_name, self.resolved_device)
                log.info(
                    "loaded model %s (%s, %s, %s) in %.1f s",
                    self.model_name,
                    self.backend,
                    self.resolved_precision,
                    self.resolved_device,
                    time.perf_counter() - started,
                )
            return self._model

    def embed_images(self, images: Sequence[Image.Image | Any]) -> np.ndarray:
        """Pillow images, or CHW uint8 tensors from the GPU path (turned into Pillow images
        for a model that takes nothing else)."""
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self.model()
        if not getattr(model, "accepts_tensors", False):
            images = [i if isinstance(i, Image.Image) else to_pil(i) for i in images]
        return normalise(model.embed_images(list(images)), self.dimension)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return normalise(self.model().embed_texts(texts), self.dimension)
