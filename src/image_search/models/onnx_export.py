"""The cache of models made for ONNX Runtime under `<data-directory>/models/`.

An entry is keyed on the model's name, a fingerprint of its files, the precision and the ONNX
opset, so that a changed model or precision always makes a new entry and never reuses an old
one. An entry is built once, under a file lock, in a `.partial` folder that is renamed into
place when complete: a killed export leaves nothing that looks finished."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

OPSET = 17
# Bumped whenever what an export writes changes, so that old entries are not reused.
EXPORT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_GRAPH = "image.onnx"
TEXT_GRAPH = "text.onnx"
# Files this small are fingerprinted by their content, larger ones by size and time.
SMALL_FILE = 1 << 20


def model_folder(name: str, patterns: Iterable[str]) -> Path:
    """A local model folder as it is, or the hub snapshot of `name` holding only the files
    that match `patterns` (downloaded once into the Hugging Face cache)."""
    folder = Path(name)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=list(patterns)))


def fingerprint(folder: Path, files: Iterable[Path] | None = None) -> str:
    """A digest of a model's files: each one's relative name and size, and its content when
    small (the configs) or else its modification time and real name (a hub cache names its
    files by their content hash, behind symbolic links)."""
    digest = hashlib.sha256()
    chosen = sorted(files) if files is not None else sorted(_model_files(folder))
    for path in chosen:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0".encode())
        if stat.st_size <= SMALL_FILE:
            digest.update(path.read_bytes())
        else:
            digest.update(f"{stat.st_mtime_ns}\0{path.resolve().name}".encode())
    return digest.hexdigest()


def _model_files(folder: Path) -> Iterable[Path]:
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield Path(directory) / name


def entry_key(name: str, files_digest: str, precision: str) -> str:
    """`<readable name>-<digest>-<precision>-opset<N>`: the digest covers the name, the files
    and the export's own version."""
    digest = hashlib.sha256(f"{name}\0{files_digest}\0{EXPORT_VERSION}".encode()).hexdigest()
    # A local folder by its own name, a hub id as owner--name.
    readable = Path(name).name if Path(name).is_dir() else name.replace("/", "--")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable)[:48].strip("-.") or "model"
    return f"{readable}-{digest[:16]}-{precision}-opset{OPSET}"


def build_once(entry: Path, build: Callable[[Path], Mapping[str, Any]], what: str) -> Path:
    """The finished entry; if there is none yet, `build` fills a fresh folder (returning its
    manifest), logged once, and the folder becomes the entry."""
    if (entry / MANIFEST).is_file():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if (entry / MANIFEST).is_file():  # another process built it meanwhile
            return entry
        log.info("%s, once, into %s (later runs reuse it)", what, entry)
        started = time.perf_counter()
        partial = entry.with_name(entry.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        manifest = build(partial)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)  # an unfinished entry from before
        partial.rename(entry)
        log.info("%s took %.1f s", what, time.perf_counter() - started)
    return entry


def read_manifest(entry: Path) -> dict[str, Any]:
    return json.loads((entry / MANIFEST).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- conversions


def quantise_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the linear layers (MatMul, Gemm): weights stored as int8,
    activations quantised on the fly. Convolutions and the rest stay float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,  # a scale per output channel: closer to fp32, as fast
        )


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs its advice (pre-processing, skipped MatMuls) on the root
    logger, which the CLI shows; it says nothing to someone indexing photos."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def convert_fp16(source: Path, target: Path) -> None:
    """float16 weights and arithmetic, float32 inputs and outputs (for CUDA)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def convert(source: Path, target: Path, precision: str) -> None:
    """`target` in `precision` from the float32 graph `source`."""
    if precision == "int8":
        quantise_int8(source, target)
    elif precision == "fp16":
        convert_fp16(source, target)
    else:
        shutil.copyfile(source, target)
