"""Peak memory of preparing one image, per format and size (issue 24, item 1): each case in a
fresh process (its own VmHWM), with the default settings, as `prepare_file` (the index run's
and the page's decode) does it; with `--old SRC`, the same file prepared by another checkout's
code (its `src` folder) side by side.

    uv run python bench/bench_decode_memory.py [--old /path/to/old/src] [--only png16,avif]

Each row is a photo-sized image and, for most formats, the largest the default
max-image-pixels accepts for it (it weighs the memory each format takes to decode). The
images are flat colour with a block (quick to encode) and written once under bench/_data.
Target: every row within 1 GB (1024 MB) at the default cap.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import DATA, ROOT

TARGET_MB = 1024
# What a run of old code may take before it is stopped (the machine is shared).
OLD_CODE_MEMORY_LIMIT = 16 * 2**30


@dataclass(frozen=True)
class Case:
    kind: str
    size: tuple[int, int]
    why: str

    @property
    def megapixels(self) -> float:
        return self.size[0] * self.size[1] / 1e6


CASES = [
    Case("jpeg", (4000, 3000), "12 MP camera photo"),
    Case("jpeg", (16320, 12240), "200 MP phone photo"),
    Case("png8", (6000, 4000), "24 MP"),
    Case("png8", (16730, 12550), "largest the cap accepts (4 bytes a pixel)"),
    Case("png16", (6000, 4000), "24 MP"),
    Case("png16", (16730, 12550), "largest the cap accepts (pixels bind)"),
    Case("rgba", (6000, 4000), "24 MP"),
    Case("rgba", (16730, 12550), "largest the cap accepts (4 bytes a pixel)"),
    Case("tiff16", (6000, 4000), "24 MP"),
    Case("tiff16", (15440, 11580), "largest Pillow loads (its own limit, 2x MAX_IMAGE_PIXELS)"),
    Case("avif", (6000, 4000), "24 MP"),
    Case("avif", (10300, 7720), "largest the cap accepts (10.5 bytes a pixel)"),
    Case("jxl", (6000, 4000), "24 MP"),
    Case("jxl", (10800, 8100), "largest the cap accepts (9.5 bytes a pixel)"),
    Case("heic", (6000, 4000), "24 MP"),
    Case("webp", (6000, 4000), "24 MP"),
    Case("webp", (8230, 6170), "largest the cap accepts (16.5 bytes a pixel)"),
    Case("dng", (6000, 4000), "24 MP sensor, no preview: demosaiced"),
    Case("dng", (14960, 11220), "largest the cap accepts demosaiced (5 bytes a pixel)"),
]
EXTENSIONS = {
    "jpeg": "jpg", "png8": "png", "png16": "png", "rgba": "png", "tiff16": "tif",
    "avif": "avif", "jxl": "jxl", "heic": "heic", "webp": "webp", "dng": "dng",
}

MAKE = r"""
import sys
import numpy as np
from PIL import Image, ImageDraw
import pillow_jxl, pillow_heif
pillow_heif.register_heif_opener()
kind, path, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
block = (width // 8, height // 4, width // 2, height * 2 // 3)

def flat(mode):
    background = {"RGB": (70, 120, 200), "RGBA": (70, 120, 200, 180), "I;16": 30000}[mode]
    image = Image.new(mode, (width, height), background)
    fill = {"RGB": (220, 40, 30), "RGBA": (220, 40, 30, 255), "I;16": 60000}[mode]
    ImageDraw.Draw(image).rectangle(block, fill=fill)
    return image

if kind == "jpeg": flat("RGB").save(path, quality=85)
elif kind == "png8": flat("RGB").save(path, compress_level=1)
elif kind == "png16": flat("I;16").save(path, compress_level=1)
elif kind == "rgba": flat("RGBA").save(path, compress_level=1)
elif kind == "avif": flat("RGB").save(path, speed=10, quality=60)
elif kind == "jxl": flat("RGB").save(path, effort=1, quality=80)
elif kind == "heic": flat("RGB").save(path, quality=60)
elif kind == "webp": flat("RGB").save(path, method=0, quality=60)
elif kind in ("tiff16", "dng"):
    import tifffile
    if kind == "tiff16":
        pixels = np.full((height, width), 30000, np.uint16)
        pixels[block[1]:block[3], block[0]:block[2]] = 60000
        tifffile.imwrite(path, pixels, compression="zlib")
    else:  # a Bayer mosaic (RGGB, 12 bits) with the DNG tags LibRaw needs
        sys.path.insert(0, sys.argv[5])
        from imagegen import WHITE_LEVEL, XYZ_TO_LINEAR_SRGB
        mosaic = np.full((height, width), 600, np.uint16)
        mosaic[0::2, 0::2] = 300
        mosaic[block[1]:block[3], block[0]:block[2]] = 2000
        matrix = tuple(v for value in np.ravel(XYZ_TO_LINEAR_SRGB)
                       for v in (round(float(value) * 10000), 10000))
        tags = [(50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
                (271, "s", 0, "Bench", True), (272, "s", 0, "Bayer 12", True),
                (274, "H", 1, 1, True), (33421, "H", 2, (2, 2), True),
                (33422, "B", 4, (0, 1, 1, 2), True), (50717, "I", 1, WHITE_LEVEL, True),
                (50721, "2i", 9, matrix, True), (50778, "H", 1, 21, True),
                (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True)]
        with tifffile.TiffWriter(path) as tif:
            tif.write(mosaic, photometric=32803, subfiletype=0, extratags=tags)
"""

# The process's own peak RSS (VmHWM), after the imports and after preparing the file, and
# the most the decode reserved from the memory budget (new code only).
MEASURE = r"""
import json, sys
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
spec = ResizeSpec.of(Settings())
result = {"imports_mb": peak()}
try:
    image = prepare_file(sys.argv[1], spec)
    result["size"] = list(image.size)
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
result["peak_mb"] = peak()
budget = getattr(spec, "budget", None)
if budget is not None:
    result["reserved_mb"] = budget().peak // 2**20
print(json.dumps(result))
"""


def file_for(case: Case) -> Path:
    folder = DATA / "decode-memory"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.kind}-{case.size[0]}x{case.size[1]}.{EXTENSIONS[case.kind]}"
    if not path.exists():
        partial = path.with_name(path.name + ".part" + path.suffix)
        arguments = [case.kind, str(partial), *map(str, case.size), str(ROOT / "tests")]
        subprocess.run([sys.executable, "-c", MAKE, *arguments], check=True)
        partial.rename(path)
    return path


def measure(path: Path, source: str | None) -> dict:
    """Preparing `path` in a fresh process, with this checkout's code or `source`'s."""
    environment = dict(os.environ)
    if source is not None:
        environment["PYTHONPATH"] = source

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (OLD_CODE_MEMORY_LIMIT, OLD_CODE_MEMORY_LIMIT))

    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        env=environment,
        preexec_fn=limited if source is not None else None,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1], "peak_mb": None}
    return json.loads(done.stdout)


def shown(result: dict) -> str:
    if "error" in result:
        return "refused" if "too large" in result["error"] else "failed"
    return f"{result['peak_mb']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="the src folder of the code to compare with")
    parser.add_argument("--only", help="comma-separated kinds (jpeg,png8,...)")
    args = parser.parse_args()
    kinds = set(args.only.split(",")) if args.only else None
    print(f"{'format':7} {'size':>12} {'MP':>6} {'file MB':>8} {'peak MB':>8} "
          f"{'reserved':>8} {'old MB':>8} {'old/new':>7}  why")
    misses, notes = [], []
    for case in CASES:
        if kinds is not None and case.kind not in kinds:
            continue
        path = file_for(case)
        new = measure(path, None)
        old = measure(path, args.old) if args.old else None
        ratio = ""
        if old and old.get("peak_mb") and "error" not in new and "error" not in old:
            ratio = f"{old['peak_mb'] / new['peak_mb']:.1f}x"
        size = f"{case.size[0]}x{case.size[1]}"
        print(f"{case.kind:7} {size:>12} {case.megapixels:6.1f} "
              f"{path.stat().st_size / 2**20:8.1f} {shown(new):>8} "
              f"{new.get('reserved_mb', ''):>8} {shown(old) if old else '':>8} {ratio:>7}  "
              f"{case.why}", flush=True)
        for label, result in (("new", new), ("old", old)):
            if result and "error" in result:
                notes.append(f"  {case.kind} {size} ({label}): {result['error'][:160]}")
        if new.get("peak_mb") and new["peak_mb"] > TARGET_MB:
            misses.append(f"{case.kind} {size}: {new['peak_mb']} MB")
    for note in notes:
        print(note)
    print(f"every row within {TARGET_MB} MB: " + ("met" if not misses else
          "missed by " + ", ".join(misses)))


if __name__ == "__main__":
    main()
