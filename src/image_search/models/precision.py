"""Which backend runs a model, where, and in which number format.

backend `auto`: a table already filled keeps the backend (and int8 or not) that filled it,
where that backend is installed; otherwise torch on a CUDA or Apple GPU when torch is
installed, onnx (fp16) on a CUDA GPU when only onnxruntime-gpu is, and onnx on the CPU.
torch: `auto` precision is bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs and on
MPS, fp32 on the CPU. onnx: `auto` is int8 on the CPU and fp16 on a CUDA GPU
(onnxruntime-gpu). Vectors always leave the model as float32, whatever the precision inside it.

Everything here is decided without importing torch or onnxruntime unless a GPU is there to
ask about: `status` and a no-op `index` must start in a second or two."""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..vectors import VectorSpec
from .base import resolve_device as resolve_torch_device
from .base import torch_installed
from .immich_layout import in_immich_layout

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
# Why a run uses the backend it does, when the settings name it.
CONFIGURED = "set in the configuration"


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses, the precision to ask it for, and why (for `status`)."""

    backend: str
    precision: str
    reason: str


def nvidia_driver_present() -> bool:
    """A cheap sign of a CUDA GPU, so that CPU-only computers never import torch or
    onnxruntime just to learn they have none."""
    return Path("/proc/driver/nvidia/version").exists() or bool(shutil.which("nvidia-smi"))


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def torch_gpu(device: str) -> bool:
    """Would torch run on a GPU for this device setting? Imports torch only where a GPU may
    be there and torch is installed."""
    if device == "cpu" or not torch_installed():
        return False
    if device == "mps" or (device == "auto" and apple_silicon()):
        return resolve_torch_device(device) == "mps"
    if device in ("auto", "cuda") and nvidia_driver_present():
        return resolve_torch_device("cuda") == "cuda"
    return False


def choose_backend(
    backend: str,
    precision: str,
    device: str,
    table: tuple[str, str] | None = None,
    model: str = "",
) -> BackendChoice:
    """Resolve backend `auto`. `table`: the backend and precision that filled the table, when
    it holds images: an upgrade never forces a re-index while that backend is installed.
    `model`: its name, for a model that only ONNX Runtime can run."""
    if backend != "auto":
        return BackendChoice(backend, precision, CONFIGURED)
    if precision == "int8":
        return BackendChoice("onnx", precision, "precision int8 runs in ONNX Runtime")
    if precision == "bf16":
        return BackendChoice("torch", precision, "precision bf16 runs in torch")
    if table is not None and (table[0] == "onnx" or torch_installed()):
        return _table_choice(table, precision, device)
    if torch_gpu(device):
        if model and in_immich_layout(model):  # asked only here: it may read the hub cache
            return BackendChoice("onnx", precision, "the model is in Immich's ONNX layout")
        return BackendChoice("torch", precision, "a GPU is here and torch is installed")
    if device in ("auto", "cuda") and nvidia_driver_present() and onnx_has_cuda():
        return BackendChoice("onnx", precision, "a CUDA GPU is here with onnxruntime-gpu")
    return BackendChoice("onnx", precision, "no GPU for torch here: ONNX Runtime is fastest")


def _table_choice(table: tuple[str, str], precision: str, device: str) -> BackendChoice:
    backend, table_precision = table
    reason = f"the table was filled with {backend} {table_precision}"
    if backend == "onnx" and precision == "auto":
        # int8 and the float precisions are different vectors: keep the table's kind.
        float_kind = "fp16" if resolve_onnx_device(device) == "cuda" else "fp32"
        precision = "int8" if table_precision == "int8" else float_kind
    return BackendChoice(backend, precision, reason)


def settings_for_backend(
    settings: Settings, table: tuple[str, str] | None = None
) -> tuple[Settings, str]:
    """`settings` with backend `auto` resolved (and precision where a table decides it),
    and the reason."""
    choice = choose_backend(
        settings.backend, settings.precision, settings.device, table, settings.model_name
    )
    resolved = dataclasses.replace(settings, backend=choice.backend, precision=choice.precision)
    return resolved, choice.reason


def planned_spec(settings: Settings) -> VectorSpec:
    """The vectors `settings` ask for, backend `auto` resolved as for a new table; precision
    `auto` stays where resolving it would import torch (see planned_precision)."""
    settings, _ = settings_for_backend(settings)
    precision = planned_precision(settings.backend, settings.precision, settings.device)
    return VectorSpec(
        settings.model_name,
        settings.dimension,
        settings.vector_type,
        settings.backend,
        precision,
        settings.device,
    )


def recorded_spec(spec: VectorSpec) -> VectorSpec:
    """`spec` with its precision resolved, as a new table records it (the store is handed
    this: Schema.ensure)."""
    if spec.precision != "auto":
        return spec
    device = device_for(spec.backend, spec.device)
    return dataclasses.replace(spec, precision=precision_for(spec.backend, spec.precision, device))


def device_for(backend: str, requested: str) -> str:
    """The device the model will run on (cpu, cuda or mps), warning once where a requested
    accelerator is absent."""
    if backend == "onnx":
        return resolve_onnx_device(requested)
    return resolve_torch_device(requested)


def precision_for(backend: str, requested: str, device: str) -> str:
    """The precision the model will run in on `device` (already resolved)."""
    if backend == "onnx":
        return resolve_onnx_precision(requested, device)
    return resolve_torch_precision(requested, device)


def planned_precision(backend: str, requested: str, device: str) -> str:
    """The precision as far as it is known without importing torch: `auto` stays `auto` only
    for torch on a device that may be a GPU (whose precision is always a float one)."""
    if backend == "onnx":
        return resolve_onnx_precision(requested, resolve_onnx_device(device))
    if requested != "auto" or device == "cpu":
        return resolve_torch_precision(requested, "cpu" if requested == "auto" else device)
    return "auto"


def resolve_torch_precision(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16" if device == "mps" else "fp32"


@functools.cache
def onnx_has_cuda() -> bool:
    import onnxruntime

    return CUDA_PROVIDER in onnxruntime.get_available_providers()


@functools.cache
def resolve_onnx_device(requested: str) -> str:
    """ONNX Runtime runs on CUDA (the `gpu` extra, onnxruntime-gpu) or on the CPU."""
    if requested == "cpu" or (requested == "auto" and not nvidia_driver_present()):
        return "cpu"
    if onnx_has_cuda() and requested in ("auto", "cuda"):
        return "cuda"
    if requested != "auto":
        log.warning(
            "device '%s' was asked for, but the onnx backend has no %s here (it needs the gpu "
            "extra, onnxruntime-gpu, and a CUDA GPU); using the CPU",
            requested,
            requested.upper(),
        )
    return "cpu"


@functools.cache
def resolve_onnx_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "fp16" if device == "cuda" else "int8"
    if requested == "fp16" and device != "cuda":
        log.warning(
            "precision 'fp16' with the onnx backend needs a CUDA GPU (the gpu extra, "
            "onnxruntime-gpu); running fp32 on the CPU"
        )
        return "fp32"
    return requested
