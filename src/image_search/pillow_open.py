"""Opening an image with Pillow, limited to the formats image-search reads, for images that
max-image-pixels allows but Pillow's own process-wide guard (Image.MAX_IMAGE_PIXELS) refuses
to open: a 200-megapixel phone photo is over twice its default.

Pillow has no per-call limit, and its guard must stay on for everyone else in the process
(the page's server decodes with Pillow too). Such an image is opened again by its format's
own plugin, found in Pillow's registry of formats: that registry (`Image.OPEN`, `Image.ID`)
and the way an `accept` check refuses with a reason (a str) are not documented. They are
used here only; tests/test_pillow_open.py pins the Pillow series this was written against
and checks each of them."""

from __future__ import annotations

import struct
import warnings
from typing import BinaryIO

import pillow_jxl  # noqa: F401  (registers Pillow's JPEG XL plugin; AVIF is Pillow's own)
from PIL import Image, ImageFile

try:  # HEIC/HEIF support is optional at run time; the dependency is declared.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover
    pass

WRITTEN_AGAINST_PILLOW = 12
# What image-search reads (scan.IMAGE_EXTENSIONS, RAW aside), as Pillow names the formats (its
# JPEG plugin also opens multi-picture JPEGs, as MPO):
# nothing else is tried on a file, whatever its content (no PostScript, no FITS, ...).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "HEIF", "AVIF", "JXL")
# Pillow's guard warns between its limit and twice it, where it refuses. max-image-pixels
# decides before any pixel is decoded; the warning would only repeat what that decided.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(stream: BinaryIO) -> ImageFile.ImageFile:
    """`Image.open` of one of FORMATS (the header only; JPEG XL's plugin decodes it whole),
    also for an image over twice Pillow's own limit, which the caller must then check."""
    try:
        return Image.open(stream, formats=FORMATS)
    except Image.DecompressionBombError:
        stream.seek(0)
        return _open_past_pillows_guard(stream)


def _open_past_pillows_guard(stream: BinaryIO) -> ImageFile.ImageFile:
    """What Image.open does for FORMATS, less its size check: each format's `accept` check
    on the first bytes, then its plugin's factory."""
    Image.init()
    prefix = stream.read(16)
    for name in FORMATS:
        if name not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str is Pillow's reason for refusing
            continue
        stream.seek(0)
        try:
            return factory(stream, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # as Image.open tries on
            continue
    raise Image.UnidentifiedImageError("cannot identify image file")
