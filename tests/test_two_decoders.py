"""The GPU path's two decoders and its batching, without a GPU (issue 27, item 4): a fake
batch decoder and a fake per-file decoder show the order of results, where failures and
refusals go, the bytes held within the memory budget, and the share that adapts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from image_search.memory_budget import MemoryBudget
from image_search.two_decoders import (
    FIRST_SHARE,
    SHARE_RANGE,
    Read,
    TwoDecoders,
    balanced,
    byte_batches,
    split,
)

pytestmark = pytest.mark.fast
BYTES = 10  # what reading one item for the batch decoder holds


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the awaited state never came"
        time.sleep(0.01)


@dataclass
class FakeDecoders:
    """Items are names. The batch decoder takes "jpg:..." (refusing "jpg:refused..."), a
    read of "...gone" fails, the per-file decoder fails "...bad". Results say who made them."""

    budget: MemoryBudget
    reads: list[str] = field(default_factory=list)
    held_while_decoding: list[int] = field(default_factory=list)
    held_while_finishing: list[int] = field(default_factory=list)
    before_prepare: dict[str, threading.Event] = field(default_factory=dict)
    after_prepare: dict[str, threading.Event] = field(default_factory=dict)
    decode_error: Exception | None = None

    def takes(self, item: str) -> bool:
        return item.startswith("jpg:")

    def held_bytes(self, item: str) -> int:
        return BYTES

    def read(self, item: str) -> Read[str] | str:
        self.reads.append(item)
        if item.endswith("gone"):
            return f"unreadable {item}"
        return Read(item, b"x" * BYTES)

    def decode(self, reads: list[Read[str]]) -> list[Any | None]:
        self.held_while_decoding.append(self.budget.used)
        if self.decode_error is not None:
            raise self.decode_error
        return [None if "refused" in read.key else f"pixels of {read.key}" for read in reads]

    def finish(self, keys: list[str], decoded: list[Any]) -> list[str]:
        self.held_while_finishing.append(self.budget.used)
        return [f"device {key}" for key in keys]

    def prepare(self, item: str) -> str:
        if item in self.before_prepare:
            assert self.before_prepare[item].wait(60)
        try:
            return f"failed {item}" if item.endswith("bad") else f"cpu {item}"
        finally:
            if item in self.after_prepare:
                self.after_prepare[item].set()


def two_decoders(
    pool: ThreadPoolExecutor, budget: MemoryBudget | None = None, share: float = 0.0
) -> tuple[TwoDecoders, FakeDecoders]:
    budget = budget or MemoryBudget(10**6)
    fake = FakeDecoders(budget)
    runner = TwoDecoders(fake, pool, budget)
    runner.share = share
    return runner, fake


def test_results_keep_the_order_of_the_items_whoever_finishes_first() -> None:
    items = ["png:0", "jpg:1", "jpg:2", "png:3", "jpg:4"]
    with ThreadPoolExecutor(3) as pool:
        runner, fake = two_decoders(pool, share=0.34)  # jpg:1 goes to the per-file decoder
        last_done = threading.Event()
        fake.before_prepare["png:0"] = last_done  # the first item finishes last
        fake.after_prepare["png:3"] = last_done
        results = runner.prepare(items)
    assert results == ["cpu png:0", "cpu jpg:1", "device jpg:2", "cpu png:3", "device jpg:4"]


def test_refusals_go_to_the_per_file_decoder_and_failures_stay_in_place() -> None:
    items = ["jpg:refused", "jpg:gone", "png:bad", "jpg:ok"]
    with ThreadPoolExecutor(2) as pool:
        runner, fake = two_decoders(pool)
        results = runner.prepare(items)
    assert results == ["cpu jpg:refused", "unreadable jpg:gone", "failed png:bad", "device jpg:ok"]
    assert sorted(fake.reads) == ["jpg:gone", "jpg:ok", "jpg:refused"]  # never png:bad


def test_an_error_of_the_batch_decoder_ends_the_batch_and_lets_its_bytes_go() -> None:
    budget = MemoryBudget(10**6)
    with ThreadPoolExecutor(2) as pool:
        runner, fake = two_decoders(pool, budget)
        fake.decode_error = RuntimeError("the GPU fell off the bus")
        with pytest.raises(RuntimeError, match="fell off"):
            runner.prepare(["jpg:1", "png:2"])
    assert budget.used == 0


def test_the_bytes_read_are_held_within_the_budget_and_let_go_before_finishing() -> None:
    budget = MemoryBudget(10**6)
    with ThreadPoolExecutor(2) as pool:
        runner, fake = two_decoders(pool, budget)
        runner.prepare(["jpg:1", "png:2", "jpg:3", "jpg:4"])
    assert fake.held_while_decoding == [3 * BYTES]  # the three files the batch decoder read
    assert fake.held_while_finishing == [0]
    assert budget.used == 0


def test_a_batch_is_not_read_while_the_budget_is_taken() -> None:
    """Back-pressure: the page's decodes (or anyone's) holding the budget keep the batch's
    files unread until they let go."""
    budget = MemoryBudget(25)
    results: list[list[str]] = []
    with ThreadPoolExecutor(2) as pool:
        runner, fake = two_decoders(pool, budget)
        with budget.reserve(20):
            thread = threading.Thread(
                target=lambda: results.append(runner.prepare(["jpg:1", "jpg:2"])), daemon=True
            )
            thread.start()
            wait_until(lambda: budget.waiting == 1)
            assert fake.reads == [] and results == []
        thread.join(60)
    assert results == [["device jpg:1", "device jpg:2"]]


class ThreadClock:
    """A fake clock: the per-file decoder's threads read `cpu`, the caller's thread reads
    `caller` in turn (start, then the batch decoder's end)."""

    def __init__(self, cpu: float, caller: list[float]) -> None:
        self.cpu = cpu
        self.caller = iter(caller)
        self.main = threading.get_ident()

    def __call__(self) -> float:
        return next(self.caller) if threading.get_ident() == self.main else self.cpu


@pytest.mark.parametrize(("cpu_seconds", "grows"), [(1.0, True), (9.0, False)])
def test_the_share_grows_when_the_cpu_waited_and_shrinks_when_the_gpu_did(
    cpu_seconds: float, grows: bool
) -> None:
    with ThreadPoolExecutor(2) as pool:
        budget = MemoryBudget(10**6)
        runner = TwoDecoders(
            FakeDecoders(budget), pool, budget, clock=ThreadClock(cpu_seconds, [0.0, 5.0])
        )
        assert runner.share == FIRST_SHARE
        runner.prepare([f"jpg:{i}" for i in range(8)])
    assert (runner.share > FIRST_SHARE) is grows


def test_the_share_stays_in_its_range() -> None:
    low, high = SHARE_RANGE
    assert balanced(high, 1.0, 2.0) == high and balanced(low, 2.0, 1.0) == low
    assert balanced(0.5, 1.0, 2.0) > 0.5 > balanced(0.5, 2.0, 1.0)


def test_split_gives_the_per_file_decoder_the_rest_and_its_share() -> None:
    items = ["jpg:0", "png:1", "jpg:2", "jpg:3", "jpg:4"]
    device, cpu = split(items, lambda item: item.startswith("jpg"), 0.5)
    assert (device, cpu) == ([3, 4], [0, 1, 2])
    assert split(items, lambda item: False, 0.5) == ([], [0, 1, 2, 3, 4])


def test_byte_batches_keep_order_count_and_bytes() -> None:
    sizes = {"a": 4, "b": 4, "c": 4, "d": 30, "e": 1, "f": 1, "g": 1}
    batches = byte_batches(list(sizes), 2, 10, sizes.__getitem__)
    assert batches == [["a", "b"], ["c"], ["d"], ["e", "f"], ["g"]]
    assert [item for batch in batches for item in batch] == list(sizes)
    assert byte_batches([], 2, 10, sizes.__getitem__) == []
