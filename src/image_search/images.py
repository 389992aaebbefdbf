"""Opening untrusted image files safely and turning them into the resized RGB JPEG we embed."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import struct
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pillow_jxl  # noqa: F401  (registers Pillow's JPEG XL plugin; AVIF is Pillow's own)
from PIL import ExifTags, Image, ImageFile, ImageOps

from .config import Settings
from .errors import ImageError
from .raw import decode_raw, raw_capture_time
from .scan import is_raw_name, path_hash

try:  # HEIC/HEIF support is optional at run time; the dependency is declared.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover
    pass

JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS) stays on for the whole
# process, Gradio's image handling included. Ours, max-image-pixels, is applied per file before
# any pixel is decoded; its warning would only repeat what that check already decided.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ResizeSpec:
    width: int
    height: int
    mode: str  # "fit" or "stretch"
    max_pixels: int

    @classmethod
    def of(cls, settings: Settings) -> ResizeSpec:
        return cls(
            width=settings.resize_width,
            height=settings.resize_height,
            mode=settings.resize_mode,
            max_pixels=settings.max_image_pixels,
        )


@dataclass
class PreparedImage:
    """One source file converted and resized, ready for the model."""

    image: Image.Image
    content_hash: str


def processed_path_for(settings: Settings, file_path: str) -> Path:
    """Where the processed JPEG of a source file lives: under data-directory, never beside
    the user's originals, in a folder of the table's own (two tables over one folder may
    process it at other sizes), named by the hash of the source path. Rows keep the path
    they were stored with: those of an earlier version, in processed/ itself, still work."""
    digest = path_hash(file_path)
    folder = settings.processed_directory / settings.table_name
    return (folder / digest[:2] / f"{digest}.jpg").resolve()


def content_hash_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc


def prepare_file(path: str | Path, spec: ResizeSpec) -> Image.Image:
    """Read, decode and resize one file. Raises ImageError with a readable reason."""
    return prepare_bytes(read_file(path), spec, raw=is_raw_name(os.fspath(path)))


def prepare_bytes(data: bytes, spec: ResizeSpec, raw: bool = False) -> Image.Image:
    """Decode image bytes (`raw`: of a camera RAW file) into an upright RGB image resized
    per `spec`."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    if raw:
        target = functools.partial(target_size, spec=spec)
        check = functools.partial(check_pixels, max_pixels=spec.max_pixels)
        return resize(decode_raw(data, target, check), spec)
    try:
        with _open_image(data, spec.max_pixels) as image:
            _draft_for(image, spec)
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not an image, or a format Pillow cannot read") from exc
    except Image.DecompressionBombError as exc:  # frames of an animation, checked by Pillow
        raise ImageError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    return resize(rgb, spec)


def _open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (read the header of) an image and apply our pixel limit.

    Pillow refuses images over twice its global limit before we see their size. When
    max-image-pixels allows such an image, it is opened again by the format's own plugin,
    which leaves that check to us, without lowering the guard for anyone else."""
    image = open_any_size(io.BytesIO(data))
    try:
        check_pixels(*image.size, max_pixels)
    except ImageError:
        image.close()
        raise
    return image


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image over max-image-pixels, before any pixel is decoded."""
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels is over max-image-pixels ({max_pixels}); "
            f"to accept it, raise that setting (--max-image-pixels {width * height})"
        )


def open_any_size(handle: BinaryIO) -> Image.Image:
    """`Image.open`, also for images over twice Pillow's own limit (a 200-megapixel photo),
    which Pillow refuses before anyone sees their size: such a file is opened again by its
    format's own plugin, so that the caller decides (max-image-pixels)."""
    try:
        return Image.open(handle)
    except Image.DecompressionBombError:
        handle.seek(0)
        return _open_without_pillow_limit(handle)


def _open_without_pillow_limit(handle: BinaryIO) -> Image.Image:
    Image.init()
    prefix = handle.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str is Pillow's reason for refusing
            continue
        handle.seek(0)
        try:
            return factory(handle, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise Image.UnidentifiedImageError("cannot identify image file")


def _draft_for(image: Image.Image, spec: ResizeSpec) -> None:
    """Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while staying above the target."""
    if image.format != "JPEG":
        return
    width, height = spec.width, spec.height
    if image.getexif().get(EXIF_ORIENTATION) in ROTATED_ORIENTATIONS:
        width, height = height, width
    image.draft("RGB", (width, height))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any colour mode made 8-bit RGB; transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_bit_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey to 8-bit by scaling, not clipping."""
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
    scaled = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def target_size(width: int, height: int, spec: ResizeSpec) -> tuple[int, int]:
    """`fit`: inside width x height, aspect kept, never enlarged. `stretch`: exactly that size."""
    if spec.mode == "stretch":
        return spec.width, spec.height
    scale = min(spec.width / width, spec.height / height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    size = target_size(image.width, image.height, spec)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def save_jpeg(image: Image.Image, destination: Path) -> None:
    """Write atomically, so a killed run never leaves half a JPEG under that name."""
    write_atomically(destination, lambda out: image.save(out, format="JPEG", quality=JPEG_QUALITY))


def write_atomically(destination: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` fills a temporary file that then takes the name `destination` at once."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.part"
    # Created like any other file (0666 less the umask), unlike mkstemp's private 0600.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def file_capture_time(
    path: str, mtime_ns: int, data: bytes | None = None, local_mtime: datetime | None = None
) -> datetime:
    """`capture_time` of an indexed file (its bytes when already read): a RAW file's date
    comes from LibRaw, which reads every RAW container."""
    source = data if data is not None else path
    if is_raw_name(path):
        return raw_capture_time(source) or local_mtime or datetime.fromtimestamp(mtime_ns / 1e9)
    return capture_time(source, mtime_ns, local_mtime)


def capture_time(
    source: str | Path | bytes, mtime_ns: int, local_mtime: datetime | None = None
) -> datetime:
    """When a photo was taken: EXIF DateTimeOriginal (the camera's wall-clock time), else the
    file's mtime in this computer's local time (or `local_mtime`, that time as another
    computer took it: the driver of a Ray run). Reads the header only, never the pixels."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with handle, open_any_size(handle) as image:
            taken = _exif_capture_time(image)
    except Exception:  # an untrusted header: any failure only means "no EXIF date"
        taken = None
    return taken or local_mtime or datetime.fromtimestamp(mtime_ns / 1e9)


def _exif_capture_time(image: Image.Image) -> datetime | None:
    if image.format == "PNG" and "exif" not in image.info:
        return None  # Pillow would decode the whole image to look for EXIF after the pixels
    exif = image.getexif()
    # Its place is the Exif sub-IFD; some tools write it into the main IFD instead.
    original = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
    if not isinstance(original, str):
        original = exif.get(ExifTags.Base.DateTimeOriginal)
    if not isinstance(original, str):
        return None
    try:  # cameras pad with NULs or spaces, and write 0000:00:00 when the clock was unset
        return datetime.strptime(original.strip("\x00 ")[:19], EXIF_DATE_FORMAT)
    except ValueError:
        return None
