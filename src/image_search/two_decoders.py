"""A batch of files prepared by two decoders at once: a batch decoder (nvJPEG on a GPU) for the
files it takes, and a per-file decoder (Pillow in the CPU threads) for the rest and for a
share of those, a share that follows which of the two finished its last batch first.

Written over any pair of decoders (the `BatchDecoder` protocol), so that its order, its
failures and the memory it holds are tested with fakes (tests/test_two_decoders.py); the real
pair is pipeline.DevicePreparer's. The batch decoder's file bytes are held within the
process's memory budget, and never while this waits for work that needs the budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .memory_budget import MemoryBudget

T = TypeVar("T")  # a work item
K = TypeVar("K")  # what the batch decoder keeps of an item it read, besides the bytes
R = TypeVar("R")  # the result for an item

FIRST_SHARE = 0.25  # of the files the batch decoder takes, the per-file decoder's at first
SHARE_STEP = 1.1
SHARE_RANGE = (0.02, 0.9)


@dataclass(frozen=True)
class Read(Generic[K]):
    """A file read for the batch decoder: what it keeps of the item, and the bytes."""

    key: K
    data: bytes


class BatchDecoder(Protocol[T, K, R]):
    """The two decoders: a batch one for the files it `takes`, and `prepare` for any file."""

    def takes(self, item: T) -> bool:
        """May the batch decoder be tried on this item (known before reading it)?"""

    def held_bytes(self, item: T) -> int:
        """The bytes reading this item for the batch decoder holds."""

    def read(self, item: T) -> Read[K] | R:
        """The item's bytes for the batch decoder, or its result already (unchanged, or a
        file that cannot be read). Runs in the pool."""

    def decode(self, reads: list[Read[K]]) -> list[Any | None]:
        """The batch decoded, in order; None for a file it refuses (the per-file decoder
        then takes it). Runs in the calling thread, the bytes held."""

    def finish(self, keys: list[K], decoded: list[Any]) -> list[R]:
        """The results of the files decoded (resized, written). Runs in the calling thread
        after the bytes are let go; may use the pool."""

    def prepare(self, item: T) -> R:
        """One item by the per-file decoder, start to end. Runs in the pool."""


class TwoDecoders(Generic[T, K, R]):
    """Prepares batches with `decoders`, the per-file decoder in `pool` (see the module)."""

    def __init__(
        self,
        decoders: BatchDecoder[T, K, R],
        pool: Executor,
        budget: MemoryBudget,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.decoders = decoders
        self.pool = pool
        self.budget = budget
        self.clock = clock
        self.share = FIRST_SHARE  # of the files the batch decoder takes, for the per-file one

    def prepare(self, items: Sequence[T]) -> list[R]:
        """A result for each item, in order."""
        decoders = self.decoders
        on_device, on_cpu = split(items, decoders.takes, self.share)
        results: dict[int, R | Future[R]] = {}
        finished: list[float] = []
        with self.budget.reserve(sum(decoders.held_bytes(items[i]) for i in on_device)):
            # Read before queueing per-file work: that may be waiting for this very budget.
            read = self.pool.map(decoders.read, [items[i] for i in on_device])
            reads = dict(zip(on_device, read, strict=True))
            started = self.clock()
            results |= {i: self.pool.submit(self._timed, items[i], finished) for i in on_cpu}
            results |= {i: read for i, read in reads.items() if not isinstance(read, Read)}
            decoding = {i: read for i, read in reads.items() if isinstance(read, Read)}
            decoded = dict(zip(decoding, self._decode(list(decoding.values())), strict=True))
            keys = {i: read.key for i, read in decoding.items()}
            del reads, decoding  # the bytes go with them, before waiting for anyone
        refused = [i for i, pixels in decoded.items() if pixels is None]
        results |= {i: self.pool.submit(decoders.prepare, items[i]) for i in refused}
        done = [i for i, pixels in decoded.items() if pixels is not None]
        if done:
            made = decoders.finish([keys[i] for i in done], [decoded[i] for i in done])
            results |= dict(zip(done, made, strict=True))
        device_seconds = self.clock() - started
        ordered = [_result(results[i]) for i in range(len(items))]
        if on_cpu and done:
            cpu_seconds = max(finished, default=started) - started
            self.share = balanced(self.share, cpu_seconds, device_seconds)
        return ordered

    def _decode(self, reads: list[Read[K]]) -> list[Any | None]:
        return self.decoders.decode(reads) if reads else []

    def _timed(self, item: T, finished: list[float]) -> R:
        try:
            return self.decoders.prepare(item)
        finally:
            finished.append(self.clock())


def _result(value: Any) -> Any:
    return value.result() if isinstance(value, Future) else value


def split(
    items: Sequence[T], takes: Callable[[T], bool], share: float
) -> tuple[list[int], list[int]]:
    """Positions for the batch decoder, and for the per-file one: those the batch decoder
    does not take, and the first `share` of those it takes."""
    taken = [i for i, item in enumerate(items) if takes(item)]
    to_cpu = round(len(taken) * share)
    chosen = set(taken)
    others = [i for i in range(len(items)) if i not in chosen]
    return taken[to_cpu:], sorted(others + taken[:to_cpu])


def balanced(share: float, cpu_seconds: float, device_seconds: float) -> float:
    """The per-file decoder's next share: more when it finished first (it waited for the
    batch decoder), less when the batch decoder did."""
    step = SHARE_STEP if cpu_seconds < device_seconds else 1 / SHARE_STEP
    low, high = SHARE_RANGE
    return min(high, max(low, share * step))


def byte_batches(
    work: Sequence[T], count: int, max_bytes: int, size_of: Callable[[T], int]
) -> list[list[T]]:
    """`work` in order, in batches of at most `count` items whose sizes add up to at most
    `max_bytes` (an item larger than that makes a batch of its own)."""
    batches: list[list[T]] = []
    batch: list[T] = []
    total = 0
    for item in work:
        size = size_of(item)
        if batch and (len(batch) == count or total + size > max_bytes):
            batches.append(batch)
            batch, total = [], 0
        batch.append(item)
        total += size
    if batch:
        batches.append(batch)
    return batches
