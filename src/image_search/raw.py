"""Camera RAW files through LibRaw (rawpy): the camera's embedded preview when it is large
enough, else the sensor data demosaiced at half size; orientation and capture date from the
RAW's own metadata."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import rawpy
from PIL import Image

from .errors import ImageError

# LibRaw's `flip` (from the RAW's orientation tag) as the Pillow transpose that makes the
# stored pixels upright; postprocess() applies it itself, the embedded preview needs it.
FLIP_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,  # 90° counter-clockwise
    6: Image.Transpose.ROTATE_270,  # 90° clockwise
}
SWAPS_SIDES = (5, 6)
# LibRaw reports "no date" as the epoch.
NO_TIMESTAMP = datetime.fromtimestamp(0)


def decode_raw(
    data: bytes,
    target: Callable[[int, int], tuple[int, int]],
    check_size: Callable[[int, int], None],
) -> Image.Image:
    """An upright RGB image of a RAW file: its embedded preview when that is at least the
    size `target` gives for the upright sensor image (what it will be resized to), else the
    sensor data demosaiced at half size. `check_size(width, height)` may refuse the file
    before anything is decoded. Raises ImageError with a readable reason."""
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            width, height = raw.sizes.width, raw.sizes.height
            check_size(width, height)
            flip = raw.sizes.flip
            wanted = target(*upright_size(width, height, flip))
            preview = _preview(raw, flip, wanted)
            if preview is not None and _covers(preview.size, wanted):
                return preview
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawError as exc:
        raise ImageError(f"cannot decode RAW file: {_reason(exc)}") from exc
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def raw_capture_time(source: str | Path | bytes) -> datetime | None:
    """The capture date LibRaw reads from the RAW's EXIF (header only), or None."""
    try:
        target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with rawpy.imread(target) as raw:
            taken = raw.other.timestamp
    except Exception:  # an untrusted header: any failure only means "no date"
        return None
    return taken if taken != NO_TIMESTAMP else None


def raw_size(path: str | Path) -> tuple[int, int]:
    """The upright size of a RAW file's image, from its header."""
    with rawpy.imread(str(path)) as raw:
        return upright_size(raw.sizes.width, raw.sizes.height, raw.sizes.flip)


def upright_size(width: int, height: int, flip: int) -> tuple[int, int]:
    return (height, width) if flip in SWAPS_SIDES else (width, height)


def _preview(raw: rawpy.RawPy, flip: int, wanted: tuple[int, int]) -> Image.Image | None:
    """The camera's own rendering stored in the file, turned upright (a JPEG one decoded at
    a reduced size no smaller than `wanted`); None when there is none or it cannot be read."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            with Image.open(io.BytesIO(thumb.data)) as opened:
                opened.draft("RGB", upright_size(*wanted, flip))  # stored sideways, if so
                image = opened.convert("RGB")
        elif thumb.format == rawpy.ThumbFormat.BITMAP and thumb.data.ndim == 3:
            image = Image.fromarray(np.ascontiguousarray(thumb.data[..., :3]), "RGB")
        else:
            return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # a damaged or absurd preview: the sensor data may still be fine
        return None
    transpose = FLIP_TRANSPOSE.get(flip)
    return image.transpose(transpose) if transpose is not None else image


def _covers(size: tuple[int, int], wanted: tuple[int, int]) -> bool:
    return size[0] >= wanted[0] and size[1] >= wanted[1]


def _reason(error: Exception) -> str:
    text = error.args[0] if error.args else type(error).__name__
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)
