"""Where a model runs and in which number format, for each backend.

torch: `auto` is bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs and on MPS, fp32 on
the CPU. onnx: `auto` is int8 on the CPU and fp16 on a CUDA GPU (onnxruntime-gpu). Vectors always
leave the model as float32, whatever the precision inside it."""

from __future__ import annotations

import functools
import logging

from .base import resolve_device as resolve_torch_device

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"


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
    if requested == "cpu":
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
