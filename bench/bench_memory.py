"""Memory: peak RSS of `image-search index` on 300 against 3,000 images.

    uv run python bench/bench_memory.py

Each index runs in its own process (the real console command) into a fresh table; the figure is
that process's peak RSS. The images are 1-megapixel JPEGs and the model the tiny test CLIP: what
grows with the folder is the run's bookkeeping, not the model or the pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import DATA, jpeg_folder
from tiny_models import build_tiny_clip

SCRIPT = """
import resource, sys
from image_search.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def peak_rss_mb(count: int, model: str) -> tuple[float, dict]:
    folder = jpeg_folder(f"one-mp-{count}", count, size=(1280, 800))
    table = f"bench_memory_{count}"
    args = [
        "index",
        "--json",
        f"--source-directory={folder}",
        f"--model-name={model}",
        "--dimension=64",
        "--device=cpu",
        f"--data-directory={DATA / 'memory-db'}",
        f"--table-name={table}",
        "--reindex",
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, check=True
    )
    return int(done.stderr.strip().splitlines()[-1]) / 1024, json.loads(done.stdout)


def main() -> None:
    model = DATA / "tiny-clip"
    if not (model / "config.json").exists():
        build_tiny_clip(model)
    small, small_report = peak_rss_mb(300, str(model))
    large, large_report = peak_rss_mb(3000, str(model))
    assert small_report["added"] == 300 and large_report["added"] == 3000
    print(f"peak RSS, 300 images:   {small:7.1f} MB")
    print(f"peak RSS, 3,000 images: {large:7.1f} MB")
    print(f"difference: {large - small:.1f} MB  (target <= 150 MB)")


if __name__ == "__main__":
    main()
