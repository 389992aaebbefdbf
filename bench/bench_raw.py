"""Camera RAW (issue 20): preparing a 24-megapixel DNG from its embedded preview against
demosaicing its sensor data at half size, side by side.

    uv run python bench/bench_raw.py [--repeat 5]

Two DNGs of the same 6000x4000 Bayer mosaic (written by tests/imagegen.py's write_dng): one
with a 1620x1080 preview (as large as many cameras embed; larger than the default 960x540
processed JPEG, so it is used), one with a 300x200 thumbnail (too small: the sensor data is
demosaiced). Both are prepared as the index run does (images.prepare_bytes, default settings).
"""

from __future__ import annotations

import argparse

from common import DATA, median_of, timed
from imagegen import photo, write_dng

from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_bytes

SENSOR = (6000, 4000)


def dng(name: str, preview_scale: float) -> bytes:
    path = DATA / "raw" / name
    if not path.exists():
        write_dng(path, photo(7, *SENSOR), preview_scale=preview_scale)
    return path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    spec = ResizeSpec.of(Settings())
    with_preview = dng("preview-1620.dng", 0.27)
    with_thumbnail = dng("thumbnail-300.dng", 0.05)
    preview_s = median_of(timed(lambda: prepare_bytes(with_preview, spec, raw=True), args.repeat))
    demosaic_s = median_of(
        timed(lambda: prepare_bytes(with_thumbnail, spec, raw=True), args.repeat)
    )
    print(f"24 MP DNG, embedded 1620x1080 preview: {preview_s * 1000:7.1f} ms")
    print(f"24 MP DNG, half-size demosaic:         {demosaic_s * 1000:7.1f} ms")
    ratio = preview_s / demosaic_s
    print(f"preview / demosaic: {ratio:.3f}  (the preview {1 / ratio:.1f}x faster)")


if __name__ == "__main__":
    main()
