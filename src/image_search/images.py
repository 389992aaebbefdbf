"""Opening untrusted image files and turning them into the resized RGB JPEG we embed.

A file is opened only if it is a regular file within max-file-mb (source_files.py); its
decode is weighed from the header before a pixel is decoded (decode_cost.py: max-image-pixels
counts memory, not pixels alone), admitted by the process's memory budget (memory_budget.py),
and reduced before it is converted or turned upright (image_pixels.py). Whatever a decoder
raises for one file is that file's ImageError, never anyone else's."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

import rawpy
from PIL import ExifTags, Image, ImageFile, features

from .config import DEFAULT_MAX_FILE_MB, Settings
from .decode_cost import (
    check_cost,
    check_pixels,
    pillow_cost,
    raw_demosaic_cost,
    raw_unpack_cost,
    working_bytes,
)
from .errors import ImageError, one_line
from .image_pixels import SWAPS_SIDES, resized, upright_rgb
from .jxl_header import is_jxl, jxl_exif, jxl_size
from .memory_budget import MemoryBudget, budget_bytes, shared_budget
from .pillow_open import open_image
from .raw import open_raw
from .scan import path_hash
from .source_files import MB, SourceFile, open_source

JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own errors for a file it cannot decode: their text says what is wrong.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
# The packages whose versions decide whether a file decodes (decoder_versions).
DECODER_PACKAGES = ("pillow", "pillow-heif", "pillow-jxl-plugin", "rawpy")


@dataclass(frozen=True)
class ResizeSpec:
    """How a file is made ready: the processed JPEG's size and resize mode, and the bounds
    of one decode (max-image-pixels, max-file-mb, memory-budget-mb)."""

    width: int
    height: int
    mode: str  # "fit" or "stretch"
    max_pixels: int
    max_file_bytes: int = DEFAULT_MAX_FILE_MB * MB
    memory_budget_mb: int | None = None  # None: derived from the machine's memory

    @classmethod
    def of(cls, settings: Settings) -> ResizeSpec:
        return cls(
            width=settings.resize_width,
            height=settings.resize_height,
            mode=settings.resize_mode,
            max_pixels=settings.max_image_pixels,
            max_file_bytes=settings.max_file_mb * MB,
            memory_budget_mb=settings.memory_budget_mb,
        )

    def budget(self) -> MemoryBudget:
        """The process's memory budget for decoding, shared by all with these settings."""
        return shared_budget(budget_bytes(self.memory_budget_mb))


@dataclass
class PreparedImage:
    """One source file converted and resized, ready for the model."""

    image: Image.Image
    content_hash: str


@dataclass(frozen=True)
class Decoded:
    """A file decoded: the image made ready, and the capture date its header holds."""

    image: Image.Image
    taken: datetime | None  # EXIF DateTimeOriginal (a RAW file's own date); None: none


def processed_path_for(settings: Settings, file_path: str) -> Path:
    """Where the processed JPEG of a source file lives: under data-directory, never beside
    the user's originals, in a folder of the table's own (two tables over one folder may
    process it at other sizes), named by the hash of the source path. Rows keep the path
    they were stored with: those of an earlier version, in processed/ itself, still work."""
    digest = path_hash(file_path)
    folder = settings.processed_directory / settings.table_name
    return (folder / digest[:2] / f"{digest}.jpg").resolve()


def decoder_versions() -> dict[str, str]:
    """The versions of what decodes a file (the packages and the libraries they bring): a
    file that failed to decode may decode once one of them changes."""
    versions = {}
    for package in DECODER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    versions["libraw"] = ".".join(map(str, rawpy.libraw_version))
    for library in ("avif", "webp", "libjpeg_turbo", "libtiff"):
        versions[library] = features.version(library) or "absent"
    try:
        from pillow_heif import libheif_version

        versions["libheif"] = libheif_version()
    except ImportError:  # pragma: no cover
        versions["libheif"] = "absent"
    return versions


def prepare_file(path: str | Path, spec: ResizeSpec) -> Image.Image:
    """Read, decode and resize one file. Raises ImageError with a readable reason."""
    with open_source(path, spec.max_file_bytes) as source:
        return decode(source, spec).image


def prepare_bytes(data: bytes, spec: ResizeSpec, raw: bool = False) -> Image.Image:
    """Decode image bytes (`raw`: of a camera RAW file) into an upright RGB image resized
    per `spec`."""
    return decode(SourceFile.of_bytes(data, raw=raw), spec).image


def decode(source: SourceFile, spec: ResizeSpec) -> Decoded:
    """A source decoded, upright, in RGB, resized per `spec`, within the memory budget.
    Raises ImageError, whatever the decoder raised."""
    if source.size == 0:
        raise ImageError("empty file (0 bytes)")
    with decoder_errors():
        if source.raw:
            return _decode_raw(source, spec)
        return _decode_with_pillow(source, spec)


@contextmanager
def decoder_errors() -> Iterator[None]:
    """Whatever a decoder raises inside, raised again as the file's ImageError."""
    try:
        yield
    except ImageError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not an image, or a format Pillow cannot read") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit (a frame, a huge TIFF)
        raise ImageError(f"image too large for Pillow's own limit: {exc}") from exc
    except MemoryError as exc:
        raise ImageError("cannot decode image: out of memory (see memory-budget-mb)") from exc
    except DECODER_ERRORS as exc:
        raise ImageError(f"cannot decode image: {one_line(exc)}") from exc
    except Exception as exc:  # a decoder's own kind of error: still this file's alone
        reason = one_line(exc).split(". ")[0]
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {reason})") from exc


def _sniffed(source: SourceFile) -> tuple[BinaryIO, bool]:
    """The source's stream at its start, and whether it holds a JPEG XL image (its Pillow
    plugin decodes the whole image as it opens it: it is measured from its header first)."""
    stream = source.stream()
    jxl = is_jxl(stream.read(16))
    stream.seek(0)
    return stream, jxl


def _decode_with_pillow(source: SourceFile, spec: ResizeSpec) -> Decoded:
    stream, jxl = _sniffed(source)
    if jxl:
        return _decode_jxl(source, stream, spec)
    with open_image(stream) as image:
        check_pixels(*image.size, spec.max_pixels)
        full_size = image.size
        _draft_for(image, spec)
        cost = pillow_cost(
            image.format,
            image.mode,
            image.size,
            source.size,
            progressive=bool(image.info.get("progressive")),
            full_size=full_size,
        )
        check_cost(*full_size, cost, spec.max_pixels, f"{image.format} image")
        with _admitted(spec, cost, image.size, source):
            return _finish(image, spec)


def _decode_jxl(source: SourceFile, stream: BinaryIO, spec: ResizeSpec) -> Decoded:
    size = _jxl_size_of(stream)
    cost = pillow_cost("JXL", "RGBA", size, source.size)  # its mode is known once decoded
    check_cost(*size, cost, spec.max_pixels, "JPEG XL image")
    with _admitted(spec, cost, size, source), open_image(stream) as image:
        return _finish(image, spec)


def _jxl_size_of(stream: BinaryIO) -> tuple[int, int]:
    size = jxl_size(stream)
    if size is None:
        raise ImageError("cannot decode image: its JPEG XL header cannot be read")
    return size


def _finish(image: ImageFile.ImageFile, spec: ResizeSpec) -> Decoded:
    """An opened image loaded, its date read, made upright RGB of the target size."""
    image.load()
    target = functools.partial(target_size, spec=spec)
    return Decoded(upright_rgb(image, _orientation(image), target), _exif_capture_time(image))


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of a loaded image (TIFF's Pillow applies as it loads); 1 when
    there is none, or its EXIF block is broken."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # an untrusted header: the pixels may still be fine
        return 1
    return orientation if isinstance(orientation, int) else 1


def _decode_raw(source: SourceFile, spec: ResizeSpec) -> Decoded:
    """The embedded preview when it is large enough (its cost bounded by the file's size),
    else the sensor data demosaiced, weighed as such."""
    with open_raw(source.libraw_input()) as raw:
        check_pixels(*raw.size, spec.max_pixels)
        wanted = target_size(*raw.upright_size, spec)
        # The preview is no larger than the file; the date costs the unpacked sensor data.
        with _admitted(spec, source.size + raw_unpack_cost(*raw.size), (0, 0), source):
            taken = raw.taken
            preview = raw.preview(wanted)
            if preview is not None:
                return Decoded(resize(preview, spec), taken)
        cost = raw_demosaic_cost(*raw.size)
        check_cost(*raw.size, cost, spec.max_pixels, "RAW file")
        half_size = (raw.size[0] // 2, raw.size[1] // 2)  # what LibRaw demosaics to
        with _admitted(spec, cost, half_size, source):
            return Decoded(resize(raw.demosaic(), spec), taken)


@contextmanager
def _admitted(
    spec: ResizeSpec, cost: int, decoded_size: tuple[int, int], source: SourceFile
) -> Iterator[None]:
    """Inside, the decode's `cost` is held in the memory budget, with what reducing an
    image of `decoded_size` takes beside it and the file's bytes held."""
    target = spec.width * spec.height
    beside = working_bytes(decoded_size[0] * decoded_size[1], target) + source.held_bytes
    with spec.budget().reserve(cost + beside):
        yield


def _draft_for(image: Image.Image, spec: ResizeSpec) -> None:
    """Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while staying above the target."""
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = spec.width, spec.height
    if image.getexif().get(EXIF_ORIENTATION) in SWAPS_SIDES:
        width, height = height, width
    image.draft("RGB", (width, height))


def target_size(width: int, height: int, spec: ResizeSpec) -> tuple[int, int]:
    """`fit`: inside width x height, aspect kept, never enlarged. `stretch`: exactly that size."""
    if spec.mode == "stretch":
        return spec.width, spec.height
    scale = min(spec.width / width, spec.height / height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    return resized(image, target_size(image.width, image.height, spec))


def image_size(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_MB * MB) -> tuple[int, int]:
    """Width and height from a file's header, upright for a RAW file (nothing decoded but a
    JPEG XL, which is measured from its header too). Raises ImageError."""
    with open_source(path, max_bytes, held_whole_bytes=0) as source, decoder_errors():
        if source.raw:
            with open_raw(source.libraw_input()) as raw:
                return raw.upright_size
        stream, jxl = _sniffed(source)
        if jxl:
            return _jxl_size_of(stream)
        with open_image(stream) as image:
            return image.size


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
    path: str,
    mtime_ns: int,
    data: bytes | None = None,
    local_mtime: datetime | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
) -> datetime:
    """`capture_time` of an indexed file (of its bytes, when already read)."""
    if data is not None:
        taken = header_capture_time(SourceFile.of_bytes(data, name=path))
    else:
        taken = _path_capture_time(path, max_bytes)
    return taken or local_mtime or datetime.fromtimestamp(mtime_ns / 1e9)


def capture_time(
    source: str | Path | bytes, mtime_ns: int, local_mtime: datetime | None = None
) -> datetime:
    """When a photo was taken: EXIF DateTimeOriginal (the camera's wall-clock time; a RAW
    file's from LibRaw), else the file's mtime in this computer's local time (or
    `local_mtime`, that time as another computer took it: the driver of a Ray run). Reads
    the header only, never the pixels, and only from a regular file."""
    if isinstance(source, bytes):
        return file_capture_time("", mtime_ns, source, local_mtime)
    return file_capture_time(str(source), mtime_ns, None, local_mtime)


def _path_capture_time(path: str, max_bytes: int) -> datetime | None:
    try:
        with open_source(path, max_bytes, held_whole_bytes=0) as source:  # the header alone
            return header_capture_time(source)
    except ImageError:  # not a regular file, too large, unreadable: no date from it
        return None


def header_capture_time(source: SourceFile) -> datetime | None:
    """The capture date in a file's header, or None. Any failure only means "no date": the
    header is untrusted."""
    try:
        if source.raw:
            with open_raw(source.libraw_input()) as raw:
                return raw.taken
        stream, jxl = _sniffed(source)
        if jxl:
            exif = jxl_exif(stream)
            return _date_of(_exif_of(exif)) if exif else None
        with open_image(stream) as image:
            return _exif_capture_time(image)
    except Exception:
        return None


def _exif_of(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def _exif_capture_time(image: Image.Image) -> datetime | None:
    if image.format == "PNG" and "exif" not in image.info:
        return None  # Pillow would decode the whole image to look for EXIF after the pixels
    try:
        return _date_of(image.getexif())
    except Exception:  # an untrusted header: a broken EXIF block is no date
        return None


def _date_of(exif: Image.Exif) -> datetime | None:
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
