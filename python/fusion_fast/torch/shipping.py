"""What DataLoader workers send to the main process: raw records packed as JSON bytes or tapes
(`ships_tapes` chooses, from the CPUs this process may use), carried by `PackedRecords` and
`PackedBatch` and decoded in Rust on arrival."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import numpy as np

from .._core import ItemSources, Shipped
from ..distributed import worker_config
from ..index import paused_gc

__all__ = ["PackedRecords", "PackedBatch", "SHIP_ENV", "ships_tapes", "cgroup_cpu_quota"]

#: How workers ship raw records: "json" (their bytes, which the main process parses), "tape" (parsed in
#: the worker, so that the main process only copies; it costs the worker two to four times the CPU) or
#: "auto" (`ships_tapes`).
SHIP_ENV = "FUSION_FAST_SHIP"


def ships_tapes(num_workers: int | None = None) -> bool:
    """Whether DataLoader workers ship records as tapes (`SHIP_ENV`); `num_workers` defaults to this
    worker's DataLoader's. "auto" (the default) does where each worker and the main process have a CPU
    of their own with one to spare: the CPUs this process may use (after its container's CPU quota),
    shared among torchrun's `LOCAL_WORLD_SIZE` ranks, are at least the workers plus 2. There the main
    process, which builds every record's Python objects, is the bound and the workers' extra work is
    free. With fewer, the workers' CPU is the main process's too, and JSON costs less in all (measured
    on 2 and 16 CPUs: docs/benchmarks.md)."""
    choice = os.environ.get(SHIP_ENV, "auto")
    if choice not in ("auto", "json", "tape"):
        raise ValueError(f"{SHIP_ENV} must be 'auto', 'json' or 'tape', not {choice!r}")
    if choice != "auto":
        return choice == "tape"
    where = worker_config()
    if num_workers is None:
        num_workers = where.num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return cpus // where.local_world_size >= num_workers + 2


#: This worker's `ships_tapes()`, by its `WorkerConfig` (one object per worker process).
_worker_choice: tuple[object, bool] | None = None


def _worker_ships_tapes() -> bool:
    """`ships_tapes()`, decided once per DataLoader worker rather than for every batch (it reads the
    environment and asks the kernel for the CPUs: about 3 µs). Outside a worker, decided each time."""
    global _worker_choice
    where = worker_config()
    if not where.in_worker:
        return ships_tapes()
    if _worker_choice is None or _worker_choice[0] is not where:
        _worker_choice = (where, ships_tapes(where.num_workers))
    return _worker_choice[1]


#: cgroup v2's CPU limit file, then v1's quota and period files (as a container sees its own cgroup).
CGROUP_CPU_FILES = (
    "/sys/fs/cgroup/cpu.max",
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
)


@functools.cache
def cgroup_cpu_quota() -> float | None:
    """The CPUs this process's cgroup may use per second (a container's `--cpus` limit, which
    `sched_getaffinity` does not show), or None without a limit."""
    v2, v1_quota, v1_period = CGROUP_CPU_FILES
    try:
        with open(v2) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(v1_quota) as f, open(v1_period) as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(int(quota), 1) / max(int(period), 1)
    except ValueError:
        return None


def _pack(sources: ItemSources, datasets: np.ndarray, numbers: np.ndarray) -> Shipped:
    return sources.pack(datasets.tobytes(), numbers.tobytes(), tape=_worker_ships_tapes())


def _unpack(shipped: Shipped) -> list[Any]:
    """The items of a packed batch, decoded in Rust."""
    with paused_gc():
        items: list[Any] = shipped.decode()
        return items


class PackedRecords(Sequence[Any]):
    """The items of a batch carried as their JSON bytes: `FusionDataset.__getitems__` returns one in a
    DataLoader worker for raw records. It behaves as the list of items, decoding them on first use;
    pickled before that (sent to the main process) it ships the bytes and unpickles as the plain list
    of items, decoded in Rust. `collate` keeps it packed, as a `PackedBatch`."""

    __slots__ = ("_shipped", "_items")

    def __init__(self, shipped: Shipped) -> None:
        self._shipped = shipped
        self._items: list[Any] | None = None

    def items(self) -> list[Any]:
        """The decoded items (decoded once)."""
        if self._items is None:
            self._items = _unpack(self._shipped)
        return self._items

    def __len__(self) -> int:
        return len(self._shipped)

    def __getitem__(self, k: Any) -> Any:
        return self.items()[k]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        return self.items() == (other.items() if isinstance(other, PackedRecords) else other)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._items is None:
            return (_unpack, (self._shipped,))
        return (list, (self._items,))  # decoded (and perhaps changed) here: send what is here


def _unpack_collated(shipped: Shipped) -> Any:
    """`collate` of a packed batch's items, built column by column in Rust."""
    with paused_gc():
        return shipped.decode(collated=True)


class PackedBatch(MutableMapping[str, Any]):
    """`collate` of a `PackedRecords`: the batch (a dict of fields) still carried as JSON bytes. Used in
    the worker it decodes and behaves as that dict; sent to the main process untouched, it arrives as
    the plain dict, decoded there in Rust."""

    __slots__ = ("_shipped", "_batch")

    def __init__(self, shipped: Shipped) -> None:
        self._shipped = shipped
        self._batch: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._batch is None:
            self._batch = _unpack_collated(self._shipped)
        return self._batch

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._decoded()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __reduce__(self) -> tuple[Any, ...]:
        if self._batch is None:
            return (_unpack_collated, (self._shipped,))
        return (dict, (self._batch,))
