"""Which backend runs a model, in which number format, and on which device: decided in one
place, `decide`, from the settings, what is installed, the hardware and the table.

backend `auto`: a table already filled keeps the backend (and int8 or not) that filled it,
where that backend is installed; otherwise torch on a CUDA or Apple GPU when torch is
installed, onnx (fp16) on a CUDA GPU when only onnxruntime-gpu is, and onnx on the CPU.
torch: `auto` precision is bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs and on
MPS, fp32 on the CPU. onnx: `auto` is int8 on the CPU and fp16 on a CUDA GPU
(onnxruntime-gpu). Vectors always leave the model as float32, whatever the precision inside it.

A decision is a value. The command line makes it once and every part asks it: the model,
the index run (what a new table records), the searcher (which tables it refuses), status and
the page. Ray workers are sent settings that name its backend and precision, so a worker's
own decision can differ only in the device it runs on, never in the vectors it makes.

Nothing here logs: what was asked for and is not here travels in the decision's `warnings`,
which the model tells when it loads. Only the hardware probe is cached (per process). torch and
onnxruntime are imported only where a GPU may be there to ask about, so `status` and a no-op
`index` start in a second or two, and onnx on a CUDA GPU is decided without torch."""

from __future__ import annotations

import dataclasses
import functools
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..vectors import VectorSpec
from .base import torch_installed
from .immich_layout import in_immich_layout

CUDA_PROVIDER = "CUDAExecutionProvider"
# Precisions that one backend only offers (config.validate refuses the other).
ONE_BACKEND_PRECISIONS = {"int8": "onnx", "bf16": "torch"}
BACKEND_NAMES = {"onnx": "ONNX Runtime", "torch": "torch"}
# Why a run uses the backend it does, when the settings name it.
CONFIGURED = "set in the configuration"
# Signs of a GPU driver, read without importing torch or onnxruntime: NVIDIA's; AMD's ROCm
# (whose GPUs torch also calls `cuda`); WSL's GPU device (a Windows driver, no /proc entry).
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
OTHER_GPU_DEVICE_FILES = (Path("/dev/kfd"), Path("/dev/dxg"))
# An accelerator asked for but absent: the CPU runs the model instead, and says so.
ONNX_WITHOUT = (
    "device '{0}' was asked for, but the onnx backend has no {1} here (it needs the gpu "
    "extra, onnxruntime-gpu, and a CUDA GPU); using the CPU"
)
TORCH_WITHOUT = {
    "cuda": "device 'cuda' was asked for but no CUDA GPU is available; using the CPU",
    "mps": "device 'mps' was asked for but MPS is not available; using the CPU",
}
ONNX_FP16_ON_CPU = (
    "precision 'fp16' with the onnx backend needs a CUDA GPU (the gpu extra, "
    "onnxruntime-gpu); running fp32 on the CPU"
)


class Hardware:
    """What this computer offers the backends. Each answer is asked once, when a decision
    first needs it, and none logs. The torch answers are asked only where torch is installed,
    and only where a GPU may be there (or one was asked for)."""

    @functools.cached_property
    def nvidia_driver(self) -> bool:
        """A cheap sign of a CUDA GPU."""
        return NVIDIA_DRIVER_FILE.exists() or bool(shutil.which("nvidia-smi"))

    @functools.cached_property
    def other_gpu_driver(self) -> bool:
        """A cheap sign of a GPU that torch may use, other than NVIDIA's driver: ROCm, WSL's
        GPU device, or a Mac."""
        devices = any(device.exists() for device in OTHER_GPU_DEVICE_FILES)
        return devices or sys.platform == "darwin"

    @functools.cached_property
    def apple_silicon(self) -> bool:
        return sys.platform == "darwin" and platform.machine() == "arm64"

    @functools.cached_property
    def onnx_cuda(self) -> bool:
        """ONNX Runtime has its CUDA provider (the gpu extra, onnxruntime-gpu)."""
        import onnxruntime

        return CUDA_PROVIDER in onnxruntime.get_available_providers()

    @functools.cached_property
    def torch_cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()

    @functools.cached_property
    def torch_mps(self) -> bool:
        import torch

        mps = getattr(torch.backends, "mps", None)
        return bool(mps) and mps.is_available()

    @functools.cached_property
    def torch_bf16(self) -> bool:
        """The CUDA GPU computes in bf16."""
        import torch

        return torch.cuda.is_bf16_supported()


@functools.cache
def system_hardware() -> Hardware:
    """This computer's hardware, probed once per process (the probe never logs)."""
    return Hardware()


@dataclass(frozen=True)
class Decision:
    """How the model runs: its backend, precision and device, none of them `auto`; why that
    backend (status prints it); and what was asked for but is not here (the model tells it
    when it loads)."""

    backend: str
    precision: str
    device: str
    reason: str = CONFIGURED
    warnings: tuple[str, ...] = ()

    def applied_to(self, settings: Settings) -> Settings:
        """`settings` naming this backend and precision: what the command works with, and
        what a Ray worker is sent, so that deciding again there gives the same vectors."""
        return dataclasses.replace(settings, backend=self.backend, precision=self.precision)


def decide(
    backend: str,
    precision: str,
    device: str,
    table: VectorSpec | None = None,
    hardware: Hardware | None = None,
    model: str = "",
) -> Decision:
    """The backend, precision and device for these settings. `table`: the vectors of the
    table to be filled or searched, when it holds images (backend `auto` keeps what filled
    it); `hardware`: this computer's unless a test fakes it; `model`: its name, for a model
    that only ONNX Runtime can run (Immich's layout)."""
    hardware = hardware or system_hardware()
    warnings: list[str] = []
    if table is not None and _keeps_table(backend, precision, table):
        chosen = table.backend
        reason = f"the table was filled with {table.backend} {table.precision}"
        where = _device(chosen, device, hardware, warnings)
        precision = _table_precision(table, precision, where)
    else:
        chosen, reason = _backend(backend, precision, device, hardware, model)
        where = _device(chosen, device, hardware, warnings)
    how = _precision(chosen, precision, where, hardware, warnings)
    return Decision(chosen, how, where, reason, tuple(warnings))


def decide_for(settings: Settings, table: VectorSpec | None = None) -> Decision:
    """`decide` for these settings' backend, precision, device and model."""
    return decide(
        settings.backend, settings.precision, settings.device, table, model=settings.model_name
    )


def planned_spec(settings: Settings, decision: Decision | None = None) -> VectorSpec:
    """The vectors that `settings`' model makes as `decision` runs it (by default decided
    from the settings alone): what a new table records, and what a filled table is checked
    against."""
    decision = decision or decide_for(settings)
    return VectorSpec(
        settings.model_name,
        settings.dimension,
        settings.vector_type,
        decision.backend,
        decision.precision,
    )


def _keeps_table(backend: str, precision: str, table: VectorSpec) -> bool:
    """Backend `auto` keeps what filled a table while that backend is installed (an upgrade
    never forces a re-index), unless the precision asked for runs in one backend only."""
    if backend != "auto" or precision in ONE_BACKEND_PRECISIONS:
        return False
    return table.backend == "onnx" or torch_installed()


def _backend(
    backend: str, precision: str, device: str, hardware: Hardware, model: str = ""
) -> tuple[str, str]:
    """Backend `auto` resolved for a new table, and why."""
    if backend != "auto":
        return backend, CONFIGURED
    if precision in ONE_BACKEND_PRECISIONS:
        only = ONE_BACKEND_PRECISIONS[precision]
        return only, f"precision {precision} runs in {BACKEND_NAMES[only]}"
    if _torch_gpu(device, hardware):
        if model and in_immich_layout(model):  # asked only here: it may read the hub cache
            return "onnx", "the model is in Immich's ONNX layout"
        return "torch", "a GPU is here and torch is installed"
    if device in ("auto", "cuda") and hardware.nvidia_driver and hardware.onnx_cuda:
        return "onnx", "a CUDA GPU is here with onnxruntime-gpu"
    return "onnx", "no GPU for torch here: ONNX Runtime is fastest"


def _torch_gpu(device: str, hardware: Hardware) -> bool:
    """Would torch run on a GPU for this device setting (backend `auto`)?"""
    if device == "cpu" or not torch_installed():
        return False
    if device == "mps" or (device == "auto" and hardware.apple_silicon):
        return hardware.torch_mps
    if device in ("auto", "cuda") and hardware.nvidia_driver:
        return hardware.torch_cuda
    return False


def _table_precision(table: VectorSpec, precision: str, device: str) -> str:
    """Precision `auto` for a filled onnx table: int8 and the float precisions are different
    vectors, so the table's kind is kept (a torch table's floats all share it)."""
    if table.backend != "onnx" or precision != "auto":
        return precision
    if table.precision == "int8":
        return "int8"
    return "fp16" if device == "cuda" else "fp32"


def _device(backend: str, requested: str, hardware: Hardware, warnings: list[str]) -> str:
    """The device (cpu, cuda or mps) the backend runs on for the device setting."""
    if requested == "cpu":
        return "cpu"
    if backend == "onnx":
        return _onnx_device(requested, hardware, warnings)
    return _torch_device(requested, hardware, warnings)


def _onnx_device(requested: str, hardware: Hardware, warnings: list[str]) -> str:
    """ONNX Runtime runs on CUDA (the `gpu` extra, onnxruntime-gpu) or on the CPU."""
    if requested == "auto" and not hardware.nvidia_driver:
        return "cpu"
    if requested in ("auto", "cuda") and hardware.onnx_cuda:
        return "cuda"
    if requested != "auto":
        warnings.append(ONNX_WITHOUT.format(requested, requested.upper()))
    return "cpu"


def _torch_device(requested: str, hardware: Hardware, warnings: list[str]) -> str:
    """`auto` picks cuda, then mps, then the CPU; an accelerator asked for and absent gives
    the CPU. Without torch, the CPU: loading the model then names the missing extra."""
    if not torch_installed():
        return "cpu"
    if requested == "auto":
        if not (hardware.nvidia_driver or hardware.other_gpu_driver):
            return "cpu"
        return "cuda" if hardware.torch_cuda else "mps" if hardware.torch_mps else "cpu"
    if hardware.torch_cuda if requested == "cuda" else hardware.torch_mps:
        return requested
    warnings.append(TORCH_WITHOUT[requested])
    return "cpu"


def _precision(
    backend: str, requested: str, device: str, hardware: Hardware, warnings: list[str]
) -> str:
    """The precision the model runs in on `device` (decided already)."""
    if backend == "onnx":
        if requested == "auto":
            return "fp16" if device == "cuda" else "int8"
        if requested == "fp16" and device != "cuda":
            warnings.append(ONNX_FP16_ON_CPU)
            return "fp32"
        return requested
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if hardware.torch_bf16 else "fp16"
    return "fp16" if device == "mps" else "fp32"
