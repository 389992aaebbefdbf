"""No-op re-index: `index` over 10,000 unchanged files against a bare os.walk + stat.

    uv run python bench/bench_reindex.py [--files 10000] [--runs 5]

The first index (with the tiny test model) is set-up and not timed. The timed runs use a fresh
Embedder each and check that it never loaded its model. The index is timed twice, side by side:
with one Database opened once and passed in, as the command line does (the figure for the
target), and with run_index opening and closing its own (the first version connected on every
run, so this is the figure to compare with older results).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, jpeg_folder, median_of, timed
from tiny_models import build_tiny_clip

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.store import Database


def bare_walk(root: Path) -> int:
    count = 0
    for directory, _, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(directory, name))
            count += 1
    return count


def flag_value(value: object) -> object:
    """A key's value as its flag takes it: a list's items between commas."""
    return ",".join(value) if isinstance(value, list) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    folder = jpeg_folder(f"small-{args.files}", args.files, size=(64, 48))
    model = DATA / "tiny-clip"
    if not (model / "config.json").exists():
        build_tiny_clip(model)
    settings = Settings(
        source_directory=folder,
        data_directory=DATA / "reindex-db",
        model_name=str(model),
        dimension=64,
        device="cpu",
        batch_size=64,
        table_name="bench_reindex",
    )
    first = run_index(settings, Embedder(model.as_posix(), "cpu", 64))
    print(f"set-up index: {first.summary()}")

    def no_op_index(database: Database | None) -> float:
        embedder = Embedder(settings.model_name, "cpu", settings.dimension)
        started = time.perf_counter()
        report = run_index(settings, embedder, database)
        elapsed = time.perf_counter() - started
        assert report.unchanged == args.files and not embedder.loaded, report.summary()
        return elapsed

    walk_runs, index_runs, opening_runs = [], [], []
    with Database(settings) as database:
        for _ in range(args.runs):  # interleaved, so that noise hits all alike
            walk_runs += timed(lambda: bare_walk(folder), 1)
            index_runs.append(no_op_index(database))
            opening_runs.append(no_op_index(None))
    cli = timed(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "image_search",
                "index",
                "--json",
                *[f"--{k}={flag_value(v)}" for k, v in settings.to_dict().items() if v is not None],
            ],
            check=True,
            capture_output=True,
        ),
        1,
    )[0]
    walk, index, opening = map(median_of, (walk_runs, index_runs, opening_runs))
    print(f"files: {args.files}, runs: {args.runs}")
    print(f"bare os.walk + stat:   {walk * 1000:7.1f} ms")
    print(f"no-op index (in process, database open): {index * 1000:7.1f} ms   model loaded: no")
    print(f"no-op index (opening the database too):  {opening * 1000:7.1f} ms")
    print(f"ratio index / walk:     {index / walk:.2f}  (target <= 3)")
    print(f"ratio with the opening: {opening / walk:.2f}  (the first version's figure was this)")
    print(f"whole CLI process, for reference (imports included): {cli:.1f} s")


if __name__ == "__main__":
    main()
