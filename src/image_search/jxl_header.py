"""The size and the EXIF block of a JPEG XL file, read from its header without decoding it:
Pillow's JPEG XL plugin (pillow-jxl-plugin) decodes the whole image as it opens the file, so
the size must be known before it is asked, and a capture date is read without decoding.
(ISO/IEC 18181-1 SizeHeader; ISO/IEC 18181-2 boxes.)"""

from __future__ import annotations

import struct
from typing import BinaryIO

CODESTREAM_SIGNATURE = b"\xff\x0a"
CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"
# The four distributions of an unsmall SizeHeader dimension: so many bits, plus one.
DIMENSION_BITS = (9, 13, 18, 30)
# Width from height by the SizeHeader's ratio field 1-7.
RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
MAX_BOXES = 64  # a header walk never goes on for ever
MAX_EXIF_BYTES = 1 << 20


def is_jxl(prefix: bytes) -> bool:
    return prefix.startswith(CODESTREAM_SIGNATURE) or prefix.startswith(CONTAINER_SIGNATURE)


def jxl_size(stream: BinaryIO) -> tuple[int, int] | None:
    """(width, height) of a JPEG XL file, or None when it is not one or its header cannot
    be read (its decoder then says what is wrong). Leaves the stream at its start."""
    try:
        codestream = _codestream_start(stream)
        return None if codestream is None else _size_header(codestream)
    finally:
        stream.seek(0)


def jxl_exif(stream: BinaryIO) -> bytes | None:
    """The TIFF-structured EXIF block of a JPEG XL container (its Exif box), or None."""
    try:
        for kind, start, length in _boxes(stream):
            if kind == b"Exif" and 4 < length <= MAX_EXIF_BYTES:
                stream.seek(start)
                payload = stream.read(length)
                if payload.startswith(TIFF_HEADERS):  # some writers leave the offset out
                    return payload
                offset = int.from_bytes(payload[:4], "big")  # to the TIFF header
                return payload[4 + offset :] or None
        return None
    finally:
        stream.seek(0)


def _codestream_start(stream: BinaryIO) -> bytes | None:
    """The first bytes of the codestream: bare, or gathered from the container's jxlc box or
    its jxlp boxes (a codestream split in parts, other boxes between them)."""
    wanted = len(CODESTREAM_SIGNATURE) + 16
    stream.seek(0)
    head = stream.read(len(CONTAINER_SIGNATURE))
    if head.startswith(CODESTREAM_SIGNATURE):
        return head + stream.read(16)
    gathered = b""
    for kind, start, length in _boxes(stream):
        if kind not in (b"jxlc", b"jxlp"):
            continue
        skip = 4 if kind == b"jxlp" else 0  # a part starts with its number
        stream.seek(start + skip)
        gathered += stream.read(max(0, min(length - skip, wanted - len(gathered))))
        if len(gathered) >= wanted:
            break
    return gathered if gathered.startswith(CODESTREAM_SIGNATURE) else None


def _boxes(stream: BinaryIO) -> list[tuple[bytes, int, int]]:
    """(type, payload offset, payload length) of the container's top-level boxes."""
    stream.seek(0)
    if stream.read(len(CONTAINER_SIGNATURE)) != CONTAINER_SIGNATURE:
        return []
    boxes, position = [], len(CONTAINER_SIGNATURE)
    for _ in range(MAX_BOXES):
        stream.seek(position)
        header = stream.read(8)
        if len(header) < 8:
            break
        size, kind = struct.unpack(">I4s", header)
        start = position + 8
        if size == 1:
            large = stream.read(8)
            if len(large) < 8:
                break
            size, start = struct.unpack(">Q", large)[0], start + 8
        length = -1 if size == 0 else size - (start - position)  # 0: to the end of the file
        if length < -1:
            break
        boxes.append((kind, start, length if length >= 0 else 1 << 62))
        if size == 0:
            break
        position = start + length
    return boxes


def _size_header(codestream: bytes) -> tuple[int, int] | None:
    bits = _Bits(codestream[len(CODESTREAM_SIGNATURE) :])
    try:
        small = bits.read(1)
        height = 8 * (bits.read(5) + 1) if small else bits.dimension()
        ratio = bits.read(3)
        if ratio in RATIOS:
            numerator, denominator = RATIOS[ratio]
            width = height * numerator // denominator
        else:
            width = 8 * (bits.read(5) + 1) if small else bits.dimension()
    except EOFError:
        return None
    return width, height


class _Bits:
    """Bits of a byte string, least significant first (JPEG XL's order)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def read(self, count: int) -> int:
        value = 0
        for shift in range(count):
            byte, bit = divmod(self.position, 8)
            if byte >= len(self.data):
                raise EOFError
            value |= ((self.data[byte] >> bit) & 1) << shift
            self.position += 1
        return value

    def dimension(self) -> int:
        return self.read(DIMENSION_BITS[self.read(2)]) + 1
