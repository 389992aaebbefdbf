"""What made a file fail, as an index run remembers it: the settings that decide whether a file
decodes and the versions of the decoders. A remembered failure is passed over only while its
cause is the same, so raising a limit or installing a codec tries the file again."""

from __future__ import annotations

import functools
import json

from .config import Settings, attribute_of

# The keys whose values decide whether a file can be read and decoded (not how it looks once
# decoded): a failure is tried again when one of them changes. Add a key here when it limits
# what a file may cost or which files are read.
DECODE_KEYS: tuple[str, ...] = ("max-image-pixels", "max-file-mb")
# The cause of a file that could not even be opened (a permission, say): tried again on every
# run, since trying costs one open and no decode.
UNREADABLE = "unreadable"


@functools.cache
def decoder_versions() -> dict[str, str]:
    """The versions of the decoders (images.decoder_versions), asked once per process."""
    from .images import decoder_versions as versions  # the decoders: only when a file failed

    return versions()


def failure_cause(settings: Settings) -> str:
    """The cause a file failing now is remembered with: one text, equal for equal causes."""
    values = {key: getattr(settings, attribute_of(key)) for key in DECODE_KEYS}
    cause = {"settings": values, "decoders": decoder_versions()}
    return json.dumps(cause, sort_keys=True, default=str)
