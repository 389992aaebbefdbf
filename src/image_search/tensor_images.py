"""JPEGs as tensors: decoded in batches by nvJPEG on a CUDA GPU (torchvision.io.decode_jpeg),
turned upright from the EXIF orientation in the header, resized and encoded again as the
processed JPEG on the same device, without a round trip through Pillow.

Only what nvJPEG takes comes here: 8-bit baseline or progressive JPEGs with one or three
colour components. Everything else (CMYK, 12-bit, arithmetic coding, PNG, HEIC, a damaged
file) returns None from `tensor_header` and takes Pillow's path in images.py, per file.
The same code runs on the CPU (the tests use that); a run uses it only on a GPU, since on
the CPU Pillow's reduced-size JPEG decoding is faster."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .images import EXIF_ORIENTATION, JPEG_QUALITY, ResizeSpec, target_size

# Start-of-frame markers nvJPEG decodes: baseline, extended sequential, progressive (Huffman).
HUFFMAN_FRAMES = {0xC0, 0xC1, 0xC2}
# Other start-of-frame markers: lossless, hierarchical or arithmetic coded.
OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# nvJPEG decodes at full size: a 108- or 200-megapixel phone photo would take 324-600 MB of GPU
# memory each, times the batch. Larger JPEGs go to Pillow, whose decoder scales down as it
# decodes (a 200 MP photo in 160 MB of CPU memory: BENCHMARKS.md, l).
TENSOR_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 = upright


def tensor_header(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The size and orientation of a JPEG the tensor decoder can take; None for anything
    else, for an image over `max_pixels` (Pillow's path reports those) and for one over
    TENSOR_MAX_PIXELS (Pillow's reduced-size decoding takes those)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    frame = _frame(data)
    if frame is None:
        return None
    precision, height, width, components = frame
    if precision != 8 or components not in (1, 3):
        return None
    if width * height > min(max_pixels, TENSOR_MAX_PIXELS):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # the header only
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a damaged header: Pillow's path says what is wrong
        return None
    return JpegHeader(width, height, orientation if 1 <= orientation <= 8 else 1)


def _frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) from the start-of-frame segment."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in HUFFMAN_FRAMES and position + 10 <= len(data):
            segment = data[position + 4 : position + 10]
            height = int.from_bytes(segment[1:3], "big")
            width = int.from_bytes(segment[3:5], "big")
            return segment[0], height, width, segment[5]
        if marker in OTHER_FRAMES or marker == 0xDA:  # not ours, or image data before a frame
            return None
        position += 2 + length
    return None


def upright(pixels: Any, orientation: int) -> Any:
    """A CHW tensor turned as Pillow's ImageOps.exif_transpose turns the same image."""
    if orientation == 2:
        return pixels.flip(2)
    if orientation == 3:
        return pixels.flip(1).flip(2)
    if orientation == 4:
        return pixels.flip(1)
    if orientation == 5:
        return pixels.transpose(1, 2)
    if orientation == 6:
        return pixels.transpose(1, 2).flip(2)
    if orientation == 7:
        return pixels.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return pixels.transpose(1, 2).flip(1)
    return pixels


def resized(pixels: Any, spec: ResizeSpec) -> Any:
    """A uint8 CHW tensor resized per `spec` (bicubic with antialiasing, as Pillow does)."""
    import torch

    height, width = pixels.shape[1:]
    new_width, new_height = target_size(width, height, spec)
    if (new_width, new_height) == (width, height):
        return pixels
    scaled = torch.nn.functional.interpolate(
        pixels[None].float(),
        size=(new_height, new_width),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    return scaled[0].clamp(0, 255).round().to(torch.uint8)


def decode_jpegs(datas: list[bytes], device: str) -> list[Any | None]:
    """RGB CHW uint8 tensors on `device`, in batches; None for a file the decoder refused
    (it then takes Pillow's path)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the batch: try them one by one
        return [_decode_one(data, device) for data in encoded]


def _decode_one(data: Any, device: str) -> Any | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def encode_jpegs(images: list[Any]) -> list[bytes]:
    """JPEG bytes of CHW uint8 tensors, encoded on their device."""
    from torchvision.io import encode_jpeg

    if not images:
        return []
    return [bytes(data.cpu().numpy()) for data in encode_jpeg(images, quality=JPEG_QUALITY)]
