"""A decoded image of any mode made the upright 8-bit RGB image the model is given, without
a copy of it at full size: it is reduced first (by whole factors, a strip of rows at a time,
each strip made RGB or grey on the way), then resized, then turned upright, small by then."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

MB = 2**20
# Whole-factor reduction stops at this many times the target size before the final bicubic
# resize (Pillow's reducing_gap): the result is as if resized from the full image.
REDUCING_GAP = 3.0
# About this many bytes of the image are converted at a time.
STRIP_BYTES = 8 * MB
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("LA", "PA", "La", "RGBa", "RGBA")
# Modes resized as they are (Pillow reduces them first itself); grey made RGB once small.
RESIZED_AS_THEY_ARE = ("RGB", "L")
# EXIF orientation -> the transpose that makes the stored pixels upright (as
# ImageOps.exif_transpose does); 5-8 swap width and height.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_SIDES = (5, 6, 7, 8)

Size = tuple[int, int]


def upright_rgb(
    image: Image.Image, orientation: int, target: Callable[[int, int], Size]
) -> Image.Image:
    """`image` (loaded, stored as EXIF `orientation` says) as upright 8-bit RGB of the size
    `target` gives for its upright size. No copy at full size is made: an RGB image already
    upright and of that size is returned as it is."""
    swapped = orientation in SWAPS_SIDES
    width, height = image.size
    upright_size = target(*((height, width) if swapped else (width, height)))
    size = (upright_size[1], upright_size[0]) if swapped else upright_size  # as stored
    if image.mode in RESIZED_AS_THEY_ARE:
        small = resized(image, size)
    else:
        reduced, box = reduced_in_strips(image, size)
        small = reduced if reduced.size == size else _resample(reduced, size, box)
    if small.mode != "RGB":
        small = small.convert("RGB")
    transpose = UPRIGHT.get(orientation)
    return small.transpose(transpose) if transpose is not None else small


def resized(image: Image.Image, size: Size) -> Image.Image:
    """Bicubic, Pillow reducing by whole factors first (no full-size copy); unchanged when
    the size is already right."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)


def reduce_factors(size: Size, target: Size) -> Size:
    """The whole factors by which an image of `size` is reduced before it is resampled to
    `target` (those Pillow's resize uses with REDUCING_GAP)."""
    return (
        max(1, int(size[0] / target[0] / REDUCING_GAP)),
        max(1, int(size[1] / target[1] / REDUCING_GAP)),
    )


def reduced_in_strips(image: Image.Image, target: Size) -> tuple[Image.Image, tuple[float, ...]]:
    """The image made RGB (or grey) and reduced by whole factors towards `target`, a strip
    of rows at a time, with the box of the reduced image that the whole original covers."""
    width, height = image.size
    factor_x, factor_y = reduce_factors(image.size, target)
    convert = strip_converter(image)
    rows = max(factor_y, STRIP_BYTES // (4 * width) // factor_y * factor_y)
    reduced: Image.Image | None = None
    for top in range(0, height, rows):
        strip = convert(image.crop((0, top, width, min(height, top + rows))))
        if (factor_x, factor_y) != (1, 1):
            strip = strip.reduce((factor_x, factor_y))
        if reduced is None:
            size = (math.ceil(width / factor_x), math.ceil(height / factor_y))
            reduced = Image.new(strip.mode, size)
        reduced.paste(strip, (0, top // factor_y))
    assert reduced is not None
    return reduced, (0, 0, width / factor_x, height / factor_y)


def _resample(image: Image.Image, size: Size, box: tuple[float, ...]) -> Image.Image:
    return image.resize(size, Image.Resampling.BICUBIC, box=box)


def strip_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """How a strip of `image` becomes 8-bit RGB or grey. High-bit-depth grey is scaled, not
    clipped, by the range of the whole image (read once, before the strips)."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        top = high_bit_depth_top(image)
        return lambda strip: high_bit_depth_to_l(strip, top)
    return to_rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Any 8-bit colour mode made RGB (grey stays grey, "1" becomes grey), transparency
    composited on white."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ALPHA_MODES:
        if image.mode != "RGBA":
            image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode == "1":
        return image.convert("L")
    if image.mode not in RESIZED_AS_THEY_ARE:
        return image.convert("RGB")
    return image


def high_bit_depth_top(image: Image.Image) -> float:
    """The value that becomes white: 65535 for data over 8 bits, else 255."""
    _, highest = image.getextrema()
    return 65535.0 if highest > 255 else 255.0


def high_bit_depth_to_l(strip: Image.Image, top: float) -> Image.Image:
    """16-bit or 32-bit grey as 8-bit grey, 0..top scaled to 0..255 (integers stay integers)."""
    if strip.mode == "F":
        pixels = np.asarray(strip, dtype=np.float32).copy()
        pixels *= np.float32(255.0 / top)
        np.clip(pixels, 0, 255, out=pixels)
    else:  # one working copy, changed in place
        pixels = np.clip(np.asarray(strip), 0, int(top)).astype(np.uint32)
        pixels *= 255
        pixels //= int(top)
    return Image.fromarray(pixels.astype(np.uint8))  # 2-d uint8: grey
