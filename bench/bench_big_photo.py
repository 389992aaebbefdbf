"""Big phone photos (issue 20): the peak memory and time of preparing one 108- or
200-megapixel JPEG, with the JPEG decoder's draft (reduced-size) decoding, as the index run
does it, against a full decode, side by side; and the peak RSS of a whole `image-search index`
of one such photo against one of a 12-megapixel photo.

    uv run python bench/bench_big_photo.py [--repeat 3]

Each measurement is a fresh process, so its peak RSS (VmHWM) is that one file's. The
photos are a smooth colour field with sensor-like noise (about the size a phone writes).
Target: peak RSS <= 600 MB for one 200-megapixel photo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import DATA, median_of
from PIL import Image, ImageChops
from tiny_models import build_tiny_clip

SIZES = {"200 MP": (16320, 12240), "108 MP": (12000, 9000), "12 MP": (4000, 3000)}
TARGET_MB = 600

# The peak RSS of this process's own memory: /proc's VmHWM. (ru_maxrss keeps the parent's
# peak across fork and exec, so a child of a large process would report the parent's.)
PEAK_MB = (
    "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])"
    " / 1024"
)

PREPARE = f"""
import sys, time
from PIL import Image
from image_search.config import Settings
from image_search.image_pixels import to_rgb
from image_search.images import ResizeSpec, prepare_file, resize
spec = ResizeSpec.of(Settings())
started = time.perf_counter()
if sys.argv[2] == "draft":
    image = prepare_file(sys.argv[1], spec)
else:  # the whole image decoded, then resized: what draft decoding saves
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(sys.argv[1]) as opened:
        image = resize(to_rgb(opened), spec)
seconds = time.perf_counter() - started
print(seconds, {PEAK_MB}, *image.size)
"""

INDEX = f"""
import sys
from image_search.cli import main
code = main(sys.argv[1:])
print({PEAK_MB}, file=sys.stderr)
sys.exit(code)
"""


def phone_photo(name: str, size: tuple[int, int]) -> str:
    """A JPEG of `size`: a smooth field of colour with noise, written once under bench/_data."""
    folder = DATA / "big-photos" / name.replace(" ", "")
    path = folder / "photo.jpg"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        field = Image.linear_gradient("L").resize(size)
        colour = Image.merge("RGB", [field, field.transpose(Image.Transpose.ROTATE_90).resize(size),
                                     Image.new("L", size, 110)])
        noise = Image.effect_noise(size, 12).convert("RGB")
        ImageChops.add(colour, noise, scale=1.0, offset=-128).save(path, quality=90)
    return str(path)


def prepare(path: str, mode: str, repeat: int) -> tuple[float, float]:
    """Median seconds and median peak RSS (MB) of preparing `path` in a fresh process."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", PREPARE, path, mode], capture_output=True, text=True, check=True
        )
        seconds, peak, *_ = map(float, done.stdout.split())
        runs.append((seconds, peak))
    return median_of([s for s, _ in runs]), median_of([p for _, p in runs])


def index_peak_mb(path: str, model: str, table: str) -> float:
    """Peak RSS of `image-search index` (the tiny test model, torch) of the folder of `path`."""
    folder = path.rsplit("/", 1)[0]
    args = ["index", "--json", f"--source-directory={folder}", f"--model-name={model}",
            "--dimension=64", "--device=cpu", "--backend=torch",
            f"--data-directory={DATA / 'big-photo-db'}", f"--table-name={table}", "--reindex"]
    done = subprocess.run(
        [sys.executable, "-c", INDEX, *args], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout)["added"] == 1, done.stdout
    return float(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    photos = {name: phone_photo(name, size) for name, size in SIZES.items()}
    print(f"{'photo':8} {'MB on disk':>10} {'draft s':>8} {'draft MB':>9} {'full s':>7} "
          f"{'full MB':>8} {'memory ratio':>12}")
    for name, path in photos.items():
        draft_s, draft_mb = prepare(path, "draft", args.repeat)
        full_s, full_mb = prepare(path, "full", args.repeat)
        on_disk = (DATA / "big-photos" / name.replace(" ", "") / "photo.jpg").stat().st_size
        print(f"{name:8} {on_disk / 2**20:10.1f} {draft_s:8.2f} {draft_mb:9.0f} {full_s:7.2f} "
              f"{full_mb:8.0f} {full_mb / draft_mb:11.1f}x")
    model = DATA / "tiny-clip"
    if not (model / "config.json").exists():
        build_tiny_clip(model)
    big = index_peak_mb(photos["200 MP"], str(model), "bench_big_200")
    small = index_peak_mb(photos["12 MP"], str(model), "bench_big_12")
    print(f"image-search index, one photo: 200 MP {big:.0f} MB, 12 MP {small:.0f} MB, "
          f"difference {big - small:.0f} MB")
    _, draft_mb = prepare(photos["200 MP"], "draft", 1)
    print(f"200 MP prepared in {draft_mb:.0f} MB (target <= {TARGET_MB} MB): "
          f"{'met' if draft_mb <= TARGET_MB else 'NOT met'}")


if __name__ == "__main__":
    main()
