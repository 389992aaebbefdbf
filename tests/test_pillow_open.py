"""pillow_open.py, the one place that reaches into Pillow past its documented API: the Pillow
series it was written against, each undocumented part it relies on, and what it promises
(images over Pillow's own guard open; the guard stays on for everyone else; only the formats
image-search reads are tried)."""

from __future__ import annotations

import io

import PIL
import pytest
from PIL import Image

from image_search.errors import ImageError
from image_search.images import ResizeSpec, prepare_bytes
from image_search.pillow_open import FORMATS, WRITTEN_AGAINST_PILLOW, open_image

pytestmark = pytest.mark.fast


def header_only_png(pixels: int) -> bytes:
    """A PNG of about `pixels` pixels that costs nothing to write (bilevel, one colour)."""
    side = int(pixels**0.5) + 1
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    return out.getvalue()


def test_written_against_this_pillow_series() -> None:
    """A new Pillow series may change the parts below: read pillow_open.py again, check
    them, then move this pin."""
    assert int(PIL.__version__.split(".")[0]) == WRITTEN_AGAINST_PILLOW


def test_the_undocumented_parts_it_uses_are_as_it_expects() -> None:
    Image.init()
    for name in FORMATS:
        assert name in Image.ID, name
        factory, accept = Image.OPEN[name]
        assert callable(factory) and (accept is None or callable(accept)), name
    png = header_only_png(100)
    _, accept = Image.OPEN["PNG"]
    assert accept(png[:16]) is True and not accept(b"GIF89a" + bytes(10))


def test_an_image_over_pillows_own_guard_opens_and_the_guard_stays_on() -> None:
    guard = Image.MAX_IMAGE_PIXELS
    assert guard is not None
    data = header_only_png(2 * guard + 10)
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself refuses it...
        Image.open(io.BytesIO(data))
    with open_image(io.BytesIO(data)) as image:  # ...we read its size and decide ourselves
        assert image.size[0] * image.size[1] > 2 * guard
    assert guard == Image.MAX_IMAGE_PIXELS


def test_only_the_formats_image_search_reads_are_tried() -> None:
    """A file in another format that Pillow knows (PPM here; PostScript would start
    Ghostscript) is not an image to image-search, whatever its name."""
    ppm = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ppm, format="PPM")
    assert "PPM" not in FORMATS
    with pytest.raises(ImageError, match="not an image"):
        prepare_bytes(ppm.getvalue(), ResizeSpec(32, 32, "fit", 10**6))
