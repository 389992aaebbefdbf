"""How many images go through the model at once when the batch-size key is unset: the
numbers the in-process executor chooses from and the key's help states, kept in one place."""

from __future__ import annotations

CPU_BATCH_SIZE = 16
"""On the CPU (measured best there: BENCHMARKS.md)."""
# On a GPU, by its free memory (executor_local.gpu_batch_size): small, medium, large.
GPU_SMALL_BATCH_SIZE = 32
GPU_MEDIUM_BATCH_SIZE = 64
GPU_LARGE_BATCH_SIZE = 128
