"""Decoding untrusted files: Pillow's process-wide bomb guard stays on, ours applies per file."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from image_search.errors import ImageError
from image_search.images import ResizeSpec, prepare_bytes


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def spec(max_pixels: int) -> ResizeSpec:
    return ResizeSpec(width=32, height=32, mode="fit", max_pixels=max_pixels)


def test_importing_the_project_keeps_pillows_guard_on() -> None:
    import image_search.cli  # noqa: F401
    import image_search.web  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None
    limit = Image.MAX_IMAGE_PIXELS
    side = int((2 * limit) ** 0.5) + 2  # over Pillow's hard limit: it refuses to open it
    header_only = io.BytesIO()
    Image.new("1", (side, side)).save(header_only, format="PNG")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(header_only.getvalue()))


def test_our_limit_applies_per_file_whatever_pillows_is(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse 100x100 now
    image = prepare_bytes(png_bytes(100, 100), spec(max_pixels=20_000))
    assert image.size == (32, 32)
    with pytest.raises(ImageError, match="max-image-pixels"):
        prepare_bytes(png_bytes(100, 100), spec(max_pixels=5_000))
    assert Image.MAX_IMAGE_PIXELS == 1000  # and nothing of ours changed it
