"""What decoding an image costs in memory, known from its header before a pixel is decoded,
and the max-image-pixels check that weighs it: an image counts as many pixels as an 8-bit
RGB image whose decoding takes the same memory. The per-pixel figures of the decoders that
keep pixels of their own are measured (bench/bench_decode_memory.py, BENCHMARKS.md r)."""

from __future__ import annotations

from PIL import ImageMode

from .errors import ImageError

MB = 2**20
# An 8-bit RGB pixel as Pillow holds it decoded: the unit max-image-pixels counts in.
RGB_PIXEL_BYTES = 4
# Beside the decoded image: the strips being converted (image_pixels.STRIP_BYTES, a few
# times over) and the reduced copy, at most REDUCED_AREA times the target's area.
STRIPS_BYTES = 48 * MB
REDUCED_AREA = 36
# Decoders that hold pixels of their own beside Pillow's while an image is loaded (bytes per
# pixel, with alpha), and the copies of the whole file they read into memory first.
DECODER_BYTES_PER_PIXEL = {"AVIF": 6.5, "HEIF": 4.5, "WEBP": 12.5, "JXL": 5.5}
FILE_COPIES = {"AVIF": 1, "HEIF": 1, "WEBP": 1, "JXL": 2, "BMP": 1}
# A progressive JPEG keeps every DCT coefficient of the whole image (2 bytes a sample) until
# its last scan, however small it is drafted; counted as if no channel were subsampled.
PROGRESSIVE_BYTES_PER_SAMPLE = 2
# LibRaw's unpacked sensor data: 16 bits a pixel (rawpy unpacks it to tell the capture date).
RAW_UNPACKED_BYTES_PER_PIXEL = 2
# LibRaw demosaicing at half size holds the sensor data (2 bytes a pixel), the half-size
# 4-channel 16-bit image made of it (2 bytes a sensor pixel) and the 8-bit RGB result
# (3 bytes at a quarter of the pixels).
RAW_DEMOSAIC_BYTES_PER_PIXEL = 5.0


def pixel_bytes(mode: str) -> int:
    """Bytes per pixel of a decoded image in `mode`: Pillow holds every multi-band 8-bit
    mode (RGB, LA, CMYK, ...) in 4 bytes a pixel, single-band ones in their sample size."""
    described = ImageMode.getmode(mode)
    if len(described.bands) > 1:
        return 4
    return int(described.typestr[-1])


def pillow_cost(
    format: str | None,
    mode: str,
    size: tuple[int, int],
    file_size: int,
    progressive: bool = False,
    full_size: tuple[int, int] | None = None,
) -> int:
    """The memory an image opened by Pillow takes to decode, per its header: `size` is what
    it decodes to (a JPEG's drafted size), `full_size` its stored size where that differs."""
    pixels = size[0] * size[1]
    cost = pixels * pixel_bytes(mode)
    cost += int(pixels * DECODER_BYTES_PER_PIXEL.get(format or "", 0))
    cost += file_size * FILE_COPIES.get(format or "", 0)
    if progressive:
        width, height = full_size or size
        bands = len(ImageMode.getmode(mode).bands)
        cost += width * height * bands * PROGRESSIVE_BYTES_PER_SAMPLE
    return cost


def working_bytes(pixels: int, target_pixels: int) -> int:
    """What reducing an image of `pixels` towards `target_pixels` takes beside it."""
    return STRIPS_BYTES + min(pixels, REDUCED_AREA * target_pixels) * RGB_PIXEL_BYTES


def raw_unpack_cost(width: int, height: int) -> int:
    return width * height * RAW_UNPACKED_BYTES_PER_PIXEL


def raw_demosaic_cost(width: int, height: int) -> int:
    return int(width * height * RAW_DEMOSAIC_BYTES_PER_PIXEL)


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image of more pixels than max-image-pixels, before any pixel is decoded."""
    if width * height > max_pixels:
        refuse(f"{width}x{height} pixels is", width * height, max_pixels)


def check_cost(width: int, height: int, cost: int, max_pixels: int, kind: str) -> None:
    """Refuse an image whose decoding (`cost` bytes) would take as much memory as more than
    max-image-pixels 8-bit RGB pixels; and one of more pixels than that."""
    check_pixels(width, height, max_pixels)
    weighted = -(-cost // RGB_PIXEL_BYTES)
    if weighted > max_pixels:
        refuse(
            f"decoding this {width}x{height} {kind} takes about {-(-cost // MB)} MB, as "
            f"much as {weighted} 8-bit RGB pixels, which is",
            weighted,
            max_pixels,
        )


def refuse(what: str, needed: int, max_pixels: int) -> None:
    raise ImageError(
        f"image too large: {what} over max-image-pixels ({max_pixels}); to accept it, "
        f"raise that setting (--max-image-pixels {needed})"
    )
