"""What made a file fail, as an index run remembers it: the settings that decide whether a file
decodes and the versions of the decoders. A remembered failure is passed over only while its
cause is the same, so raising a limit or installing a codec tries the file again."""

from __future__ import annotations

import functools
import importlib.metadata
import json

from .config import Settings, attribute_of

# The keys whose values decide whether a file can be read and decoded (not how it looks once
# decoded): a failure is tried again when one of them changes. Add a key here when it limits
# what a file may cost or which files are read.
DECODE_KEYS: tuple[str, ...] = ("max-image-pixels",)
# The packages that read image files, by distribution name (their versions pin the codecs
# their wheels bring), and the codecs Pillow was built with (a Pillow built against the
# system's libraries gains a codec without a new version of its own).
DECODER_DISTRIBUTIONS = ("pillow", "pillow-heif", "pillow-jxl-plugin", "rawpy")
PILLOW_CODECS = ("jpg", "jpg_2000", "zlib", "libtiff", "webp", "avif")
# The cause of a file that could not even be opened (a permission, say): tried again on every
# run, since trying costs one open and no decode.
UNREADABLE = "unreadable"


@functools.cache
def decoder_versions() -> dict[str, str | None]:
    """The version of each decoder image-search uses; None for one that is not installed."""
    from PIL import features

    versions: dict[str, str | None] = {}
    for name in DECODER_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    for codec in PILLOW_CODECS:
        try:
            versions[f"pillow {codec}"] = features.version(codec)
        except ValueError:  # a codec this Pillow does not know of
            versions[f"pillow {codec}"] = None
    try:
        import rawpy

        versions["libraw"] = ".".join(map(str, rawpy.libraw_version))
    except ImportError:
        versions["libraw"] = None
    return versions


def failure_cause(settings: Settings) -> str:
    """The cause a file failing now is remembered with: one text, equal for equal causes."""
    values = {key: getattr(settings, attribute_of(key)) for key in DECODE_KEYS}
    cause = {"settings": values, "decoders": decoder_versions()}
    return json.dumps(cause, sort_keys=True, default=str)
