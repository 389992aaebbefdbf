"""Generated test images: distinct 'photographs' in every format, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_array(seed: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A smooth random colour field with blocks: different seeds look different to a CNN/ViT."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image).copy()
    for _ in range(3):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        array[y : y + 20, x : x + 20] = rng.integers(0, 256, size=3)
    return array


def photo(seed: int, width: int = 160, height: int = 120) -> Image.Image:
    return Image.fromarray(photo_array(seed, width, height), "RGB")


def write_photo(path: Path, seed: int, width: int = 160, height: int = 120) -> Path:
    """Save a generated photo in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = photo(seed, width, height)
    if path.suffix.lower() == ".gif":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    format_by_suffix = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
    image.save(path, format=format_by_suffix.get(path.suffix.lower()))
    return path


def write_broken_files(folder: Path) -> list[Path]:
    """Files with image extensions that are not valid images."""
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "_full.jpg"
    write_photo(full, seed=99)
    data = full.read_bytes()
    full.unlink()
    files = {
        "truncated.jpg": data[: len(data) // 3],
        "empty.png": b"",
        "random.webp": np.random.default_rng(7).bytes(2048),
        "notes.jpeg": b"this is a text file, not a photo\n",
    }
    paths = []
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths
