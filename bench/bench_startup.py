"""Start-up: how long each command takes as a whole process, from `image-search ...` to exit
(or, for `serve`, to the page answering), on a small library indexed with the tests' tiny model.

    uv run python bench/bench_startup.py [--runs 5]

Each command runs `--runs` times, interleaved round after round so that noise from a shared
machine hits all alike; the figures are medians. Targets (issue 17, 2 cores): status <= 1.5 s,
no-op index <= 2 s, search --like <= 2.5 s, serve page answering <= 10 s, unreachable hub
<= 3 s, port in use <= 2 s. The unreachable hub is a host name that cannot resolve (what an
offline machine sees) and a model id in no local cache.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import median_of
from imagegen import write_photo  # tests/ is on the path through common
from tiny_models import build_tiny_clip

TARGETS = {
    "status": 1.5,
    "index (nothing new)": 2.0,
    "search --like": 2.5,
    "serve (page answering)": 10.0,
    "unreachable hub": 3.0,
    "port in use": 2.0,
}
COMMAND = [sys.executable, "-m", "image_search"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds for one whole process; it must end as the benchmark expects."""
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{args} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def serve_seconds(cwd: Path) -> float:
    """From start to the page's first answer; then SIGTERM."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("serve exited before answering")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=60)


def port_in_use_seconds(cwd: Path) -> float:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        return run(["serve", "--port", str(taken.getsockname()[1])], cwd)


def library(folder: Path) -> Path:
    """A config, a tiny model and eight photos, indexed once."""
    build_tiny_clip(folder / "tiny-clip")
    for i in range(8):
        write_photo(folder / "photos" / f"p{i}.jpg", seed=i)
    config = {
        "source-directory": "photos",
        "model-name": str(folder / "tiny-clip"),
        "dimension": 64,
        "resize-width": 96,
        "resize-height": 64,
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    run(["index"], folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as temporary:
        folder = library(Path(temporary))
        offline = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": temporary}
        cases: dict[str, Callable[[], float]] = {
            "status": lambda: run(["status"], folder),
            "index (nothing new)": lambda: run(["index"], folder),
            "search --like": lambda: run(["search", "--like", "photos/p1.jpg"], folder),
            "serve (page answering)": lambda: serve_seconds(folder),
            "unreachable hub": lambda: run(
                ["index", "--model-name", "someone/not-cached-anywhere", "--table-name", "new"],
                folder,
                offline,
            ),
            "port in use": lambda: port_in_use_seconds(folder),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, case in cases.items():
                samples[name].append(case())
        run(["status"], folder)  # the last process stops the embedded server
    print(f"{'command':<24} {'median s':>9} {'target s':>9}  met   (runs: {runs}, cores: "
          f"{len(os.sched_getaffinity(0))})")
    for name, values in samples.items():
        median = median_of(values)
        met = "yes" if median <= TARGETS[name] else "NO"
        print(f"{name:<24} {median:>9.2f} {TARGETS[name]:>9.1f}  {met}")


if __name__ == "__main__":
    main()
