"""How much memory decoding may take at once in this process: one budget that every decode
reserves its estimated cost from before it decodes (the index run's prepare threads, the
page's queries and the GPU path's file bytes alike), so that together they stay within it.
A decode larger than the whole budget still runs, once nothing else is decoding."""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

MB = 2**20
# The budget when memory-budget-mb is unset: this share of the machine's memory (the rest is
# for the model, the database and everything else), never below the floor.
MEMORY_SHARE = 0.25
MIN_DERIVED_BYTES = 512 * MB
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


class MemoryBudget:
    """Reservations of bytes, admitted in the order they were asked for: one is admitted
    when it fits beside those held, or when none is held (a decode larger than the whole
    budget runs alone). A thread that already holds a reservation is never made to wait for
    another (it would wait for itself)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self.peak = 0  # the most bytes held at once so far
        self._held = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()
        self._holding = threading.local()

    @property
    def used(self) -> int:
        """Bytes held by the reservations admitted."""
        return self._used

    @property
    def waiting(self) -> int:
        """Reservations asked for and not admitted yet."""
        with self._changed:
            return len(self._queue)

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold `cost` bytes while inside, waiting first until they are admitted."""
        cost = max(0, cost)
        ticket = object()
        nested = getattr(self._holding, "count", 0) > 0
        with self._changed:
            self._queue.append(ticket)
            try:
                if not nested:
                    self._changed.wait_for(lambda: self._queue[0] is ticket and self._fits(cost))
                self._used += cost
                self.peak = max(self.peak, self._used)
                self._held += 1
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()
        self._holding.count = getattr(self._holding, "count", 0) + 1
        try:
            yield
        finally:
            self._holding.count -= 1
            with self._changed:
                self._used -= cost
                self._held -= 1
                self._changed.notify_all()

    def _fits(self, cost: int) -> bool:
        return self._held == 0 or self._used + cost <= self.capacity


_budgets: dict[int, MemoryBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(capacity: int) -> MemoryBudget:
    """The process's budget of `capacity` bytes: every caller with the same settings (the
    index run and the page in one process) shares one."""
    with _budgets_lock:  # asked for at every decode: made once, not one to throw away each time
        budget = _budgets.get(capacity)
        if budget is None:
            budget = _budgets[capacity] = MemoryBudget(capacity)
        return budget


def budget_bytes(memory_budget_mb: int | None) -> int:
    """The memory-budget-mb key in bytes; unset, a quarter of the machine's memory."""
    if memory_budget_mb is not None:
        return memory_budget_mb * MB
    return derived_budget_bytes()


@functools.cache
def derived_budget_bytes() -> int:
    return max(MIN_DERIVED_BYTES, int(machine_memory() * MEMORY_SHARE))


def machine_memory() -> int:
    """The physical memory, or this process's cgroup limit where that is lower."""
    total = psutil.virtual_memory().total
    return min([total, *cgroup_memory_limits()])


def cgroup_memory_limits(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> list[int]:
    """The memory limits that apply to this process: cgroup v2's memory.max and v1's
    memory.limit_in_bytes, of its own cgroup and every cgroup above it, as mounted under
    `root` (in a container, the mount's root is the container's own cgroup)."""
    folders = [(root, "memory.max"), (root / "memory", "memory.limit_in_bytes")]
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            folders += [(folder, "memory.max") for folder in _ancestors(root, path)]
        elif "memory" in controllers.split(","):
            v1 = _ancestors(root / "memory", path)
            folders += [(folder, "memory.limit_in_bytes") for folder in v1]
    limits = []
    for folder, name in dict.fromkeys(folders):
        try:
            text = (folder / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit; v1 says a huge number
            limits.append(int(text))
    return limits


def _ancestors(mount: Path, path: str) -> list[Path]:
    """`mount`/`path` and each folder above it, up to `mount`."""
    parts = [part for part in path.split("/") if part and part != ".."]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
