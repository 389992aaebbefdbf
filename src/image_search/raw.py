"""Camera RAW files through LibRaw (rawpy): the camera's embedded preview when it is large
enough, else the sensor data demosaiced at half size; orientation and capture date from the
RAW's own metadata. Opening reads the header only; the caller weighs and admits each decode."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import BinaryIO

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


class RawFile:
    """A RAW file opened by LibRaw: its header read, nothing decoded yet."""

    def __init__(self, raw: rawpy.RawPy) -> None:
        self._raw = raw

    @property
    def size(self) -> tuple[int, int]:
        """The sensor image's size as stored."""
        return self._raw.sizes.width, self._raw.sizes.height

    @property
    def upright_size(self) -> tuple[int, int]:
        return upright_size(*self.size, self._raw.sizes.flip)

    @property
    def taken(self) -> datetime | None:
        """The capture date from the RAW's EXIF, or None. rawpy reads the sensor data
        (unpacks it) before it tells: ask within what that costs (raw_unpack_cost)."""
        try:
            taken = self._raw.other.timestamp
        except rawpy.LibRawError:  # damaged sensor data: no date (the preview may be fine)
            return None
        return taken if taken != NO_TIMESTAMP else None

    def preview(self, wanted: tuple[int, int]) -> Image.Image | None:
        """The camera's own rendering stored in the file, upright, when it is at least
        `wanted` (the upright size it will be resized to); else None."""
        preview = _preview(self._raw, self._raw.sizes.flip, wanted)
        return preview if preview is not None and _covers(preview.size, wanted) else None

    def demosaic(self) -> Image.Image:
        """The sensor data demosaiced at half size, upright (LibRaw turns it). LibRaw's
        buffers are let go before the result becomes a Pillow image: the file is closed
        after this."""
        try:
            pixels = self._raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except rawpy.LibRawError as exc:
            raise ImageError(f"cannot decode RAW file: {_reason(exc)}") from exc
        self._raw.close()
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


@contextmanager
def open_raw(source: str | BinaryIO) -> Iterator[RawFile]:
    """A RAW file (a path LibRaw opens, or a stream read whole) opened by LibRaw."""
    try:
        raw = rawpy.imread(source)
    except rawpy.LibRawError as exc:
        raise ImageError(f"cannot decode RAW file: {_reason(exc)}") from exc
    with raw:
        yield RawFile(raw)


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
            with Image.open(io.BytesIO(thumb.data), formats=["JPEG"]) as opened:
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
