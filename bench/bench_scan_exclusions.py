"""What leaving out NAS and OS side folders costs the scan: `scan_images` over 10,000 files
without exclusions, with the built-in ones (exclude-system-folders), and with those plus a glob
of names and a path pattern, alternating, medians and ratios.

    uv run python bench/bench_scan_exclusions.py [--files 10000] [--runs 15]

The folder is the no-op re-index benchmark's (bench_reindex.py), made here if missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import jpeg_folder, median_of

from image_search.config import SYSTEM_FOLDERS
from image_search.scan import NO_EXCLUSIONS, Exclusions, scan_images

SCANS = {
    "none": NO_EXCLUSIONS,
    "built-in": Exclusions(SYSTEM_FOLDERS),
    "built-in + glob + path": Exclusions([*SYSTEM_FOLDERS, "*-edited.jpg", "2019/raw/*"]),
}


def scan_seconds(folder: Path, exclusions: Exclusions, files: int) -> float:
    started = time.perf_counter()
    found = sum(1 for _ in scan_images(folder, exclusions=exclusions))
    elapsed = time.perf_counter() - started
    assert found == files, found
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    folder = jpeg_folder(f"small-{args.files}", args.files, size=(64, 48))
    samples: dict[str, list[float]] = {name: [] for name in SCANS}
    for _ in range(args.runs):  # interleaved, so that noise hits all alike
        for name, exclusions in SCANS.items():
            samples[name].append(scan_seconds(folder, exclusions, args.files))
    base = median_of(samples["none"])
    print(f"files: {args.files}, runs: {args.runs}")
    for name, times in samples.items():
        median = median_of(times)
        print(f"scan, exclusions {name:<22} {median * 1000:7.1f} ms   ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
