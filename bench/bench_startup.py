"""Start-up: how long each command takes as a whole process, from `image-search ...` to exit
(or, for `serve`, to the page answering), on a small library indexed with the tests' tiny model.

    uv run python bench/bench_startup.py [--runs 5] [--vit-b32 [--photos 300]
        [--before SRC] [--rclip VENV]]

Each command runs `--runs` times, interleaved round after round so that noise from a shared
machine hits all alike; the figures are medians. Targets (issue 17, 2 cores): status <= 1.5 s,
no-op index <= 2 s, search --like <= 2.5 s, serve page answering <= 10 s, unreachable hub
<= 3 s, port in use <= 2 s. The unreachable hub is a host name that cannot resolve (what an
offline machine sees) and a model id in no local cache.

`--vit-b32` adds `search --text` with a ViT-B/32-class model (target <= 1 s, issue 25): a
random-weight CLIP ViT-B/32 at 256 px with a tokenizer of CLIP's size, in Immich's layout
(exported with torch once, into bench/_data), over `--photos` generated photos, with the
default settings (onnx, int8). `--before SRC` runs the same search with the code in SRC (a
checkout's src folder) side by side; `--rclip VENV` runs rclip 4's text search (rclip
installed in that virtual environment) on the same photos with the same random model in
rclip's own layout (`rclip --no-indexing`, after one run that indexes).
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

from common import DATA, median_of
from imagegen import write_photo  # tests/ is on the path through common
from tiny_immich import build_bpe_tokenizer_of_size, publish_in_immich_layout
from tiny_models import build_tiny_clip

TARGETS = {
    "status": 1.5,
    "index (nothing new)": 2.0,
    "search --like": 2.5,
    "serve (page answering)": 10.0,
    "unreachable hub": 3.0,
    "port in use": 2.0,
    "search --text, ViT-B/32": 1.0,
}
TEXT_QUERY = "a photo of a cat on a sofa"
STAND_IN_SIZE = 256  # rclip's ViT-B-32-256
COMMAND = [sys.executable, "-m", "image_search"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, command: list | None = None
) -> float:
    """Seconds for one whole process; it must end as the benchmark expects."""
    started = time.perf_counter()
    command = COMMAND if command is None else command
    done = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True)
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


def vit_b32_stand_in() -> tuple[Path, Path]:
    """A random CLIP ViT-B/32 at 256 px (rclip's architecture) with a tokenizer of CLIP's size,
    written in Immich's layout and in rclip's (its RCLIP_DATADIR), once, under bench/_data."""
    immich, rclip = DATA / "vit-b32-256-immich", DATA / "vit-b32-256-rclip"
    if (immich / "config.json").exists() and (rclip / "README.md").exists():
        return immich, rclip
    import torch
    from transformers import CLIPConfig, CLIPModel

    immich.mkdir(parents=True, exist_ok=True)
    tokenizer = immich / "clip-tokenizer.json"
    vocab = rclip / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    size, pad = build_bpe_tokenizer_of_size(tokenizer, 49408, open_clip_vocab=vocab)
    config = CLIPConfig()
    config.vision_config.image_size = STAND_IN_SIZE
    config.text_config.vocab_size = size
    config.text_config.eos_token_id = config.text_config.pad_token_id = pad
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()
    publish_in_immich_layout(clip, immich, tokenizer, "<|endoftext|>")
    write_rclip_layout(clip, rclip)
    return immich, rclip


def write_rclip_layout(clip, datadir: Path) -> None:
    """rclip 4's files: its two graphs (input `input`, any batch) and the files it checks for
    before it would download anything."""
    import warnings

    import torch

    folder = datadir / "ViT-B-32-256-datacomp_s34b_b86k"
    folder.mkdir(parents=True, exist_ok=True)

    class Tower(torch.nn.Module):
        def __init__(self, visual: bool) -> None:
            super().__init__()
            self.clip, self.visual = clip, visual

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if self.visual:
                out = self.clip.get_image_features(pixel_values=input)
            else:
                out = self.clip.get_text_features(input_ids=input)
            return out if hasattr(out, "shape") else out.pooler_output

    samples = {
        "visual.onnx": (Tower(True), torch.randn(1, 3, STAND_IN_SIZE, STAND_IN_SIZE)),
        "textual.onnx": (Tower(False), torch.ones(1, 77, dtype=torch.int64)),
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for name, (module, sample) in samples.items():
            torch.onnx.export(
                module,
                (sample,),
                str(folder / name),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    for name in ("LICENSE", "OPENAI-CLIP-MIT.txt", "THIRD_PARTY_NOTICES.md", "README.md"):
        (datadir / name).write_text("random-weight stand-in for a benchmark\n", encoding="utf-8")


def vit_b32_library(folder: Path, photos: int, rclip: Path | None) -> Path:
    """`photos` generated photos indexed with the ViT-B/32 stand-in (and by rclip, when given)."""
    model, rclip_data = vit_b32_stand_in()
    library = folder / "vit-b32"
    for i in range(photos):
        write_photo(library / "photos" / f"p{i:04d}.jpg", seed=i, width=640, height=480)
    config = {"source-directory": "photos", "model-name": str(model), "dimension": 512}
    (library / "config.json").write_text(json.dumps(config), encoding="utf-8")
    run(["index"], library)
    if rclip is not None:
        run([TEXT_QUERY], library / "photos", rclip_env(rclip_data), rclip_command(rclip))
    return library


def rclip_env(datadir: Path) -> dict[str, str]:
    return {**os.environ, "RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}


def rclip_command(venv: Path) -> list:
    return [venv / "bin" / "rclip"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--vit-b32", action="store_true", help="add search --text, ViT-B/32")
    parser.add_argument("--photos", type=int, default=300, help="photos for --vit-b32")
    parser.add_argument("--before", type=Path, help="another checkout's src, side by side")
    parser.add_argument("--rclip", type=Path, help="a virtual environment with rclip 4")
    parser.add_argument("--only-vit-b32", action="store_true", help="skip the tiny-model rows")
    args = parser.parse_args()
    runs = args.runs
    with tempfile.TemporaryDirectory() as temporary:
        cases: dict[str, Callable[[], float]] = {}
        folder = Path(temporary)
        if not args.only_vit_b32:
            cases.update(tiny_model_cases(library(folder), temporary))
        if args.vit_b32 or args.only_vit_b32:
            b32 = vit_b32_library(folder, args.photos, args.rclip)
            search = ["search", "--text", TEXT_QUERY]
            cases["search --text, ViT-B/32"] = lambda: run(search, b32)
            if args.before is not None:
                old = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
                cases["  the code before"] = lambda: run(search, b32, old)
            if args.rclip is not None:
                _, rclip_data = vit_b32_stand_in()
                rclip = ["--no-indexing", TEXT_QUERY]
                env, command = rclip_env(rclip_data), rclip_command(args.rclip)
                cases["  rclip 4, same model"] = lambda: run(rclip, b32 / "photos", env, command)
            for case in cases.values():  # once untimed: first-use work (caches) is not timed
                case()
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, case in cases.items():
                samples[name].append(case())
        for stop in [folder] + ([folder / "vit-b32"] if "search --text, ViT-B/32" in cases else []):
            if (stop / "config.json").exists():
                run(["status"], stop)  # the last process stops the embedded server
    print(
        f"{'command':<24} {'median s':>9} {'target s':>9}  met   (runs: {runs}, cores: "
        f"{len(os.sched_getaffinity(0))})"
    )
    reference = samples.get("search --text, ViT-B/32")
    for name, values in samples.items():
        median = median_of(values)
        if name in TARGETS:
            met = "yes" if median <= TARGETS[name] else "NO"
            print(f"{name:<24} {median:>9.2f} {TARGETS[name]:>9.1f}  {met}")
        else:  # a side-by-side row: its ratio to ours, round by round
            ratios = [ours / theirs for ours, theirs in zip(reference or [], values, strict=True)]
            print(f"{name:<24} {median:>9.2f}   ours / this: {median_of(ratios):.2f}")


def tiny_model_cases(folder: Path, temporary: str) -> dict[str, Callable[[], float]]:
    offline = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": temporary}
    return {
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


if __name__ == "__main__":
    main()
