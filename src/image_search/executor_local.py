"""The in-process executor: files prepared in threads (Pillow, or on a CUDA GPU nvJPEG beside
it), embedded in batches by this process's model, and written by `BatchStep`. On a GPU the
three overlap (batches prepared ahead, rows written by a thread behind a bounded queue); on
the CPU, where the model already fills every core, preparing and embedding take turns."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from .batch_sizes import (
    CPU_BATCH_SIZE,
    GPU_LARGE_BATCH_SIZE,
    GPU_MEDIUM_BATCH_SIZE,
    GPU_SMALL_BATCH_SIZE,
)
from .config import Settings
from .executor import BatchStep, Job, Result, RunTally
from .images import ResizeSpec
from .pipeline import BackgroundWriter, DevicePreparer, WorkItem, prepare_item, prepared_batches
from .two_decoders import TwoDecoders, byte_batches
from .words_index import photo_words

log = logging.getLogger(__name__)
# Batches waiting for the writer thread on a GPU (each holds its images and vectors).
WRITE_QUEUE = 2
GIB = 1024**3
# A GPU batch's file bytes may take this share of the memory budget.
DEVICE_BATCH_SHARE_OF_BUDGET = 0.25
# What the nvJPEG path imports; without them a CUDA run decodes with Pillow.
TENSOR_MODULES = ("torch", "torchvision")
NVIDIA_SMI_TIMEOUT_S = 10


class LocalExecutor:
    """The work of an index run done by this process (see the module's docstring)."""

    def execute(self, job: Job, work: list[WorkItem], tally: RunTally) -> None:
        embedder = job.embedder
        if any(item.stored is None for item in work):
            # New files almost always need the model: load it before any bar is drawn, so
            # that a model that cannot be loaded is one line, not a line between bars.
            embedder.model()
        overlap = embedder.resolved_device != "cpu"
        words = photo_words(job.settings, job.store)
        step = BatchStep(job.store, embedder, job.settings.model_name, words)
        with ExitStack() as stack:
            stack.enter_context(tally.counting())
            writer = stack.enter_context(BackgroundWriter(depth=WRITE_QUEUE if overlap else 0))
            for results in self._batches(stack, job, work, overlap):
                step.run(results, tally, writer.submit)
                tally.check_stop()  # this batch is stored (or queued) whole

    @staticmethod
    def _batches(
        stack: ExitStack, job: Job, work: list[WorkItem], overlap: bool
    ) -> Iterator[list[Result]]:
        """Prepared batches in order: Pillow in threads, or, with a CUDA model, JPEGs
        decoded on the GPU and the rest by Pillow beside it."""
        settings, device = job.settings, job.embedder.resolved_device
        size = batch_size_for(settings, device)
        spec = ResizeSpec.of(settings)
        workers = max(1, os.cpu_count() or 1)
        pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="prepare"))
        tensor_device = tensor_device_for(device)
        if tensor_device is None:
            prepare = functools.partial(prepare_item, settings, spec)
            yield from prepared_batches(pool, prepare, work, size, overlap)
            return
        budget = spec.budget()
        device_decoders = DevicePreparer(settings, spec, tensor_device, pool)
        preparer = TwoDecoders(device_decoders, pool, budget)
        ahead = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="device"))
        held = int(budget.capacity * DEVICE_BATCH_SHARE_OF_BUDGET)
        chunks = byte_batches(work, size, held, device_decoders.held_bytes)
        for [results] in prepared_batches(ahead, preparer.prepare, chunks, 1, overlap=True):
            yield results


def batch_size_for(settings: Settings, device: str) -> int:
    """The batch-size key, or: 16 on the CPU (measured best there), on a GPU by its memory."""
    if settings.batch_size:
        return settings.batch_size
    return CPU_BATCH_SIZE if device == "cpu" else gpu_batch_size(device)


def gpu_batch_size(device: str) -> int:
    """128 images keep an H100-class GPU busy with ViT-B/32 and the ViT-L/14-at-512 class
    alike (larger batches did not help the latter); less free memory, smaller batches; the
    smallest when the free memory cannot be known."""
    if not device.startswith("cuda"):
        return GPU_SMALL_BATCH_SIZE
    free = free_gpu_memory(device)
    if free is None:
        return GPU_SMALL_BATCH_SIZE
    if free >= 16 * GIB:
        return GPU_LARGE_BATCH_SIZE
    return GPU_MEDIUM_BATCH_SIZE if free >= 8 * GIB else GPU_SMALL_BATCH_SIZE


def free_gpu_memory(device: str) -> int | None:
    """Free memory of a CUDA device in bytes: from torch where it is installed, else from
    the NVIDIA driver's nvidia-smi (backend onnx needs no torch); None if neither tells."""
    if _importable("torch"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return _nvidia_smi_free_memory(device)


def _nvidia_smi_free_memory(device: str) -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    index = device.partition(":")[2] or "0"
    query = [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", index]
    try:
        done = subprocess.run(
            query, capture_output=True, text=True, check=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
        return int(done.stdout.split()[0]) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.debug("nvidia-smi could not tell the GPU's free memory: %s", exc)
        return None


def tensor_device_for(device: str) -> str | None:
    """Where JPEGs are decoded as tensors: on a CUDA GPU, when torch and torchvision are
    installed (backend onnx may run on CUDA without them); elsewhere Pillow (its
    reduced-size JPEG decoding beats a full decode on the CPU, and MPS has no JPEG
    decoder)."""
    if not device.startswith("cuda"):
        return None
    return device if all(map(_importable, TENSOR_MODULES)) else None


def _importable(module: str) -> bool:
    """Can `module` be imported here (tried, for a module that hides itself by failing)?"""
    try:
        if importlib.util.find_spec(module) is None:
            return False
        importlib.import_module(module)
    except (ImportError, ValueError):
        return False
    return True
