"""A deterministic fake embedding model whose vectors are known, so a test can compute the
exact ranking it expects (the style of simonw/llm's tests/conftest.py).

An image's vector is its mean colour: axes 0-2 are red, green and blue (0-1), axis 3 is how
dark it is (so black is a direction too), the rest are zero. A pure red photo is therefore
exactly [1, 0, 0, 0, 0, ...]. A text that names a colour of COLOURS gets that colour's vector
("red" is [1, 0, 0, 0, ...]); any other text gets a fixed vector on the spare axes, which no
image shares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from image_search.config import Settings
from image_search.models import Embedder

FAKE_MODEL_NAME = "fake/mean-colour"
FAKE_DIMENSION = 8
COLOUR_AXES = 4  # red, green, blue, darkness

Colour = tuple[int, int, int]

COLOURS: dict[str, Colour] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}


# Solid colours whose cosine similarities to red, green, blue and to each other are all
# distinct (test_fast.py's `distinct_order` checks), so that every expected ranking is exact.
PALETTE: dict[str, Colour] = {
    "red": (255, 0, 0),
    "orange": (250, 130, 10),
    "yellow": (240, 220, 30),
    "green": (20, 200, 40),
    "teal": (30, 130, 140),
    "blue": (15, 25, 250),
    "purple": (130, 30, 200),
    "pink": (250, 110, 180),
    "brown": (120, 60, 20),
}


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def colour_vector(rgb: Sequence[float]) -> np.ndarray:
    """The fake model's unit vector for a mean colour given as 0-255 channels."""
    channels = np.asarray(rgb, dtype=np.float64) / 255.0
    vector = np.zeros(FAKE_DIMENSION)
    vector[:3] = channels
    vector[3] = 1.0 - channels.max()
    return unit(vector)


def text_vector(text: str) -> np.ndarray:
    """A colour's vector for its name; for other text a fixed vector off the colour axes."""
    name = text.strip().lower()
    if name in COLOURS:
        return colour_vector(COLOURS[name])
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    vector = np.zeros(FAKE_DIMENSION)
    vector[COLOUR_AXES:] = np.random.default_rng(seed).random(FAKE_DIMENSION - COLOUR_AXES) + 0.1
    return unit(vector)


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


class FakeColourModel:
    """An `EmbeddingModel` that counts what goes through it."""

    def __init__(self, name: str = FAKE_MODEL_NAME) -> None:
        self.name = name
        self.image_batches: list[int] = []  # the size of each embed_images call
        self.texts: list[str] = []  # every text embedded, in order
        self.loads = 0  # how many times a loader handed this model out

    @property
    def images_embedded(self) -> int:
        return sum(self.image_batches)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        self.image_batches.append(len(images))
        return np.stack([colour_vector(mean_colour(image)) for image in images])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return np.stack([text_vector(text) for text in texts])

    def loader(self, name: str, device: str) -> FakeColourModel:
        """For `Embedder(..., loader=model.loader)`: hands out this very model."""
        self.loads += 1
        return self


def fake_embedder(model: FakeColourModel, dimension: int = FAKE_DIMENSION) -> Embedder:
    return Embedder(model.name, "cpu", dimension, loader=model.loader)


def fake_model_settings(
    folder: Path, data_directory: Path, table_name: str, **overrides: object
) -> Settings:
    """Settings for the fake model: photos in `folder`/photos (made here), results in
    `folder`/output, a table of the caller's own on the session's server."""
    settings = Settings(
        **{"ocr": False, **overrides},  # the fake model's photos hold no words
        source_directory=folder / "photos",
        output_directory=folder / "output",
        device="cpu",
        model_name=FAKE_MODEL_NAME,
        dimension=FAKE_DIMENSION,
        resize_width=32,
        resize_height=32,
        data_directory=data_directory,
        table_name=table_name,
    )
    settings.source_directory.mkdir(parents=True)
    return settings


def write_palette(folder: Path, palette: dict[str, Colour] = PALETTE) -> dict[str, Path]:
    """One solid-colour PNG per colour, named after it."""
    return {name: solid_photo(folder / f"{name}.png", rgb) for name, rgb in palette.items()}


def index_palette(
    settings: Settings, model: FakeColourModel, palette: dict[str, Colour] = PALETTE
) -> dict[str, Path]:
    """The palette as solid-colour photos in the settings' source folder, indexed with
    `model`, whose record of batches is then cleared for the test's own calls."""
    from image_search.ingest import run_index

    photos = write_palette(settings.source_directory, palette)
    run_index(settings, fake_embedder(model))
    model.image_batches.clear()
    return photos


def solid_photo(path: Path, rgb: Colour, size: tuple[int, int] = (48, 32)) -> Path:
    """A photo of one colour, in the format its extension names (PNG keeps it exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path
