"""Training integration: a torch `Dataset` over mixtures, batching, GPU prefetch and distributed indexing.

    from torch.utils.data import DataLoader
    from fusion_fast.torch import CudaPrefetcher, FusionDataset, collate, ensure_indexed, worker_context

    ensure_indexed("stage1.yaml")                       # under torchrun: each missing index built once
    ds = FusionDataset("stage1.yaml", image_folder="playground/train/images", transform=tokenize)
    loader = DataLoader(ds, batch_size=16, num_workers=4, collate_fn=collate, pin_memory=True,
                        multiprocessing_context=worker_context())   # cheaper hand-overs
    for batch in CudaPrefetcher(loader):                # copies batch k+1 while batch k trains
        ...

Everything here needs torch (`pip install fusion-fast[torch]`); Pillow only for `load_images=True`.
See docs/training.md.
"""

from __future__ import annotations

import abc
import functools
import itertools
import json
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, get_worker_info

from ._core import SOURCE_KEY, ItemSources, collate_records, decode_shipped
from .errors import CorruptIndexError, FusionFastError, IndexMissingError, RecordError, StaleIndexError
from .index import BAD_CONVERSATIONS, BAD_IMAGE, NO_CONVERSATIONS, NOT_OBJECT, JsonIndex, paused_gc
from .index import open as open_index
from .indexing import expand_targets
from .mixture import Mixture
from .stage import is_stage_yaml
from .worker_context import worker_context

__all__ = [
    "FusionDataset",
    "PackedRecords",
    "PackedBatch",
    "collate",
    "CudaPrefetcher",
    "ensure_indexed",
    "distributed_share",
    "private_memory",
    "worker_context",
    "SOURCE_KEY",
    "IMAGE_KEY",
    "PIXELS_KEY",
    "DEFAULT_PAD_VALUES",
    "SHIP_ENV",
    "ships_tapes",
]

logger = logging.getLogger(__name__)

#: Key added to every item: `{"dataset": name, "index": record number in its file}` (`SOURCE_KEY`).
#: Key of the decoded image(s) with `load_images=True`: one RGB `PIL.Image` for a string `image`, a list
#: of them for a list.
IMAGE_KEY = "_image"
#: Key of `image_processor`'s result (e.g. `fusion_fast.vision.FusionImageProcessor`'s tensor): one for a
#: string `image`, a list of them for a list. `collate` stacks tensors of one shape into a batch.
PIXELS_KEY = "_pixel_values"

#: Every cause a bad sample can have, in the order of `FusionDataset`'s shared skip counters.
SKIP_CAUSES = ("malformed_record", "missing_conversations", "missing_image", "unreadable_image", "rejected")

OnError = Literal["raise", "skip"]
Source = Mixture | str | os.PathLike[str]

# -- the dataset ------------------------------------------------------------------------------------

#: Index flags that make a record unusable for training, with the cause and detail reported.
_BAD_FLAGS = (
    (NOT_OBJECT, "malformed_record", "the record is not a JSON object"),
    (BAD_IMAGE, "malformed_record", "'image' is neither a path nor a list of paths"),
    (NO_CONVERSATIONS, "missing_conversations", "'conversations' is missing or not a list"),
    (BAD_CONVERSATIONS, "missing_conversations", "a turn of 'conversations' has no string 'value'"),
)
_ANY_BAD_FLAG = NOT_OBJECT | BAD_IMAGE | NO_CONVERSATIONS | BAD_CONVERSATIONS


class _DatasetInfo(NamedTuple):
    """What the per-record loop needs of one mixture dataset."""

    name: str
    data_path: str
    records: JsonIndex
    #: The image folder with a trailing "/", or "" without one: `prefix + p` is POSIX
    #: `os.path.join(folder, p)` for relative `p`, at a sixth of its cost.
    image_prefix: str


class _BadSample(Exception):
    """A sample that cannot be used: `cause` (a short category) and the `RecordError` to raise."""

    def __init__(self, cause: str, error: RecordError) -> None:
        super().__init__(cause)
        self.cause = cause
        self.error = error


class FusionDataset(Dataset[Any]):
    """A map-style torch `Dataset` over a `Mixture`, a stage YAML or one `.json` / `.jsonl` file.

    Item i is record i of the mixture as a dict, with `image` resolved: a relative path (or each one of
    a list) is joined to the dataset's own image folder (the YAML's `image_folder` / `images_folder` /
    `data_folder`), else to `image_folder`, exactly like FUSION's `os.path.join(image_folder, image)`;
    absolute paths stay. `item["_source"] = {"dataset": name, "index": record number in its file}`.
    With `load_images=True`, `item["_image"]` holds the image(s) opened with Pillow and converted to
    RGB. With `image_processor` (a callable on an image path, e.g. `fusion_fast.vision.
    FusionImageProcessor`), `item["_pixel_values"]` (`PIXELS_KEY`) holds its result for the image (a list
    for a list of images). `transform(item)`, when given, runs last and its result is the item.

    Bad samples: a record that is not an object, has no well-formed `conversations` or a malformed
    `image` (all read from the index, no parsing needed), an image that is missing or cannot be decoded
    (with `load_images=True` or `image_processor`), or a `RecordError` raised by `transform`. With
    `on_error="raise"` a `RecordError` names the dataset, record number, id and path. With
    `on_error="skip"` item i is replaced by the next good sample (i+1, i+2, ... wrapping around),
    deterministically; `skipped` counts the bad samples requested (a bad sample met only while looking
    for a replacement is not counted then, so over an epoch each bad sample counts once) and
    `skip_causes` counts them by cause. The counters live in shared memory: read in the main process they
    include every DataLoader worker's skips (fork or spawn). The first of each cause is logged as a
    warning, once for the dataset and all its workers.

    Opening is lazy: nothing is read until the first access. Given a path, pickling keeps only the
    description, so DataLoader workers (fork or spawn) open the memory-mapped indexes themselves; a
    `Mixture` object pickles as its YAML entries (see `Mixture`). `root` and `seed` apply to a YAML.
    `__getitems__` fetches a whole batch with one `get_many`, which DataLoader uses automatically.
    """

    def __init__(
        self,
        source: Source,
        *,
        image_folder: str | os.PathLike[str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        load_images: bool = False,
        image_processor: Callable[[str], Any] | None = None,
        on_error: OnError = "raise",
        root: str | os.PathLike[str] | None = None,
        seed: int = 0,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if isinstance(source, Mixture):
            self._description: tuple[str, str | None, int] | None = None
            self._mixture: Mixture | None = source
        elif isinstance(source, (str, os.PathLike)):
            self._description = (
                os.path.abspath(source),
                os.path.abspath(root) if root is not None else None,
                seed,
            )
            self._mixture = None
        else:
            raise TypeError(
                f"source must be a Mixture or the path of a stage YAML / .json / .jsonl file, not "
                f"{type(source).__name__}"
            )
        self.image_folder = os.fspath(image_folder) if image_folder is not None else None
        self.transform = transform
        self.load_images = load_images
        self.image_processor = image_processor
        self.on_error = on_error
        # created here, before any DataLoader worker starts, so that every worker shares it
        self._skips: _SkipCounts | None = _SkipCounts() if on_error == "skip" else None
        self._info: list[_DatasetInfo] | None = None
        self._sources: ItemSources | None = None  # set with `_info`

    # -- opening ------------------------------------------------------------------------------------
    @property
    def mixture(self) -> Mixture:
        """The underlying mixture, opened on first use."""
        if self._mixture is None:
            assert self._description is not None
            path, root, seed = self._description
            if is_stage_yaml(path):
                self._mixture = Mixture.from_yaml(path, root=root, seed=seed)
            else:
                self._mixture = Mixture([path], seed=seed)
        return self._mixture

    def _datasets(self) -> list[_DatasetInfo]:
        if self._info is None:
            self._info = [
                _DatasetInfo(
                    d.name,
                    str(d.path),
                    d.index,
                    _prefix(os.fspath(d.image_folder) if d.image_folder is not None else self.image_folder),
                )
                for d in self.mixture.datasets
            ]
            self._sources = ItemSources(
                [d.records._core for d in self._info],
                [d.name for d in self._info],
                [d.image_prefix for d in self._info],
            )
        return self._info

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_info"] = state["_sources"] = None  # hold open indexes: reopened by the receiver
        if self._description is not None:
            state["_mixture"] = None  # reopened from the path on first access
        return state

    # -- skip counts ----------------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Bad samples skipped so far (on_error="skip"), by this process and all its DataLoader workers."""
        return 0 if self._skips is None else sum(self._skips.counts())

    @property
    def skip_causes(self) -> Counter[str]:
        """`skipped` by cause."""
        if self._skips is None:
            return Counter()
        return Counter({c: n for c, n in zip(SKIP_CAUSES, self._skips.counts(), strict=True) if n})

    # -- sizes --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.mixture)

    @property
    def lengths(self) -> np.ndarray:
        """FUSION's `lengths` (int64 numpy), for `LengthGroupedSampler` / HF Trainer."""
        return self.mixture.lengths

    @property
    def modality_lengths(self) -> np.ndarray:
        """FUSION's `modality_lengths` (int64 numpy): positive with an image, negative text-only."""
        return self.mixture.modality_lengths

    # -- items --------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> Sequence[Any]:
        """Items at `indices` (negative allowed), records parsed in one call: DataLoader's batched path.

        In a DataLoader worker, raw records (no `transform`, no `load_images`) come back as a
        `PackedRecords`: the same items, carried as their JSON bytes until first used. Sent to the main
        process untouched, they are decoded there in Rust, which costs less than pickling the Python
        objects in the worker and unpickling them in the main process."""
        if self.transform is None and not self.load_images and self.image_processor is None:
            if get_worker_info() is not None:
                return PackedRecords(
                    self._pack_positions(indices) or _pack(self._item_sources(), *self._locate_good(indices))
                )
            datasets, numbers = self._locate_good(indices)
            with paused_gc():
                return self._item_sources().items(datasets.tobytes(), numbers.tobytes())
        out = self._prepare(indices)
        for k, item in enumerate(out):
            if isinstance(item, _BadSample):
                out[k] = self._replace(int(indices[k]), item, self._prepare)
        return out

    def _pack_positions(self, indices: Sequence[int]) -> _Payload | None:
        """A worker's batch located, checked and packed in one call to Rust (workers share the two
        cores with the main process, so their time per batch counts); None when a sample is bad or an
        index out of range, which `_locate_good` then handles."""
        sources, mix, tape = self._item_sources(), self.mixture, _worker_ships_tapes()
        packed = sources.pack_positions(indices, mix.offsets, mix.record_numbers, _ANY_BAD_FLAG, tape=tape)
        return None if packed is None else (*packed, sources.names, sources.prefixes, tape)

    def _item_sources(self) -> ItemSources:
        self._datasets()
        assert self._sources is not None
        return self._sources

    def _locate_flagged(
        self, indices: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dataset numbers, record numbers (little-endian int64) and index flags of the samples at
        `indices`: the flags alone tell whether a record can become an item."""
        datasets, numbers = self.mixture.locate(indices)
        datasets, numbers = datasets.astype("<i8", copy=False), numbers.astype("<i8", copy=False)
        flags = self._item_sources().flags(datasets.tobytes(), numbers.tobytes())
        return datasets, numbers, np.frombuffer(flags, dtype=np.uint8)

    def _flagged(self, d: int, number: int, flag: int) -> _BadSample:
        """The bad sample that the first of `flag`'s bad bits describes (the record parsed for its id)."""
        ds = self._datasets()[d]
        return _flagged(ds, number, flag, ds.records[number])

    def _locate_good(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Dataset and record numbers of the samples at `indices`, each bad one replaced by the next good
        one (or raised): from the index flags alone."""
        datasets, numbers, flags = self._locate_flagged(indices)
        bad = np.flatnonzero(flags & _ANY_BAD_FLAG)
        if len(bad):
            datasets, numbers = datasets.copy(), numbers.copy()
        for pos in bad.tolist():
            sample = self._flagged(int(datasets[pos]), int(numbers[pos]), int(flags[pos]))
            datasets[pos], numbers[pos] = self._replace(int(indices[pos]), sample, self._locate_one)
        return datasets, numbers

    def _locate_one(self, indices: Sequence[int]) -> list[Any]:
        """[(dataset number, record number)] of the one sample at `indices`, or [its `_BadSample`]."""
        datasets, numbers, flags = self._locate_flagged(indices)
        d, number, flag = int(datasets[0]), int(numbers[0]), int(flags[0])
        return [self._flagged(d, number, flag) if flag & _ANY_BAD_FLAG else (d, number)]

    def _prepare(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """Items at `indices` with images loaded and the transform applied, a `_BadSample` in place of
        each bad one."""
        info = self._datasets()
        datasets, numbers, flags = self._locate_flagged(indices)
        good = (flags & _ANY_BAD_FLAG) == 0
        with paused_gc():
            items = self._item_sources().items(datasets[good].tobytes(), numbers[good].tobytes())
        fresh = iter(items)
        out: list[Any] = []
        for d, number, flag in zip(datasets.tolist(), numbers.tolist(), flags.tolist(), strict=True):
            try:
                if flag & _ANY_BAD_FLAG:
                    raise self._flagged(d, number, flag)
                out.append(self._complete(next(fresh), info[d], number))
            except _BadSample as bad:
                out.append(bad)
        return out

    def _process(self, path: str) -> Any:
        """`image_processor` of the file `path`, else of the bytes of the image store member it names
        (`fusion_fast.vision.ImageProcessor` takes either)."""
        from .images import read_path

        process: Callable[[Any], Any] | None = self.image_processor
        assert process is not None
        return process(path if os.path.isfile(path) else read_path(path))

    def _complete(self, item: dict[str, Any], ds: _DatasetInfo, number: int) -> Any:
        """`load_images`, `image_processor` and `transform` applied to an item."""
        if (self.load_images or self.image_processor is not None) and "image" in item:
            image = item["image"]
            if image is None:
                raise _bad("malformed_record", "'image' is null", ds, number, item)
            paths = [image] if isinstance(image, str) else image
            if self.load_images:
                opened = [_load_image(_open_rgb, p, ds, number, item) for p in paths]
                item[IMAGE_KEY] = opened[0] if isinstance(image, str) else opened
            if self.image_processor is not None:
                done = [_load_image(self._process, p, ds, number, item) for p in paths]
                item[PIXELS_KEY] = done[0] if isinstance(image, str) else done
        if self.transform is None:
            return item
        try:
            return self.transform(item)
        except RecordError as e:
            raise _bad("rejected", f"rejected by the transform: {e}", ds, number, item) from e

    def _replace(self, i: int, bad: _BadSample, fetch: Callable[[Sequence[int]], list[Any]]) -> Any:
        """The next good sample after bad sample i (on_error="skip"), or raise (on_error="raise")."""
        if self.on_error == "raise":
            raise bad.error from bad.__cause__
        self._count(bad)  # only the requested sample: the bad ones passed over count when requested
        n = len(self)
        start = i % n
        for step in range(1, n):
            item = fetch([(start + step) % n])[0]
            if not isinstance(item, _BadSample):
                return item
            bad = item
        raise RecordError(f"every one of the {n} samples is bad; the last: {bad.error}") from bad.error

    def _count(self, bad: _BadSample) -> None:
        assert self._skips is not None
        if self._skips.add(bad.cause):
            logger.warning(
                "skipping bad samples (%s), replacing each with the next good one; first: %s "
                "(further ones are only counted in FusionDataset.skipped)",
                bad.cause,
                bad.error,
            )


def _flagged(ds: _DatasetInfo, number: int, flag: int, record: Any) -> _BadSample:
    """The bad sample that the first of `flag`'s bad bits describes."""
    for bit, cause, detail in _BAD_FLAGS:
        if flag & bit:
            return _bad(cause, detail, ds, number, record)
    raise AssertionError(f"flag {flag} has no bad bit")


def _bad(cause: str, detail: str, ds: _DatasetInfo, number: int, record: Any) -> _BadSample:
    record_id = record.get("id") if isinstance(record, dict) else None
    message = f"dataset {ds.name!r}, record {number} (id {record_id!r}): {detail}"
    return _BadSample(cause, RecordError(message, path=ds.data_path, record=number))


def _prefix(folder: str | None) -> str:
    if not folder:
        return ""
    return folder if folder.endswith("/") else folder + "/"


# -- records shipped as bytes -----------------------------------------------------------------------

#: A packed batch: the records' bytes and lengths (`ItemSources.pack`), their dataset and record numbers
#: (int64 bytes), the datasets' names and image prefixes, and whether the bytes are tapes.
_Payload = tuple[bytes, bytes, bytes, bytes, list[str], list[str], bool]

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
    if num_workers is None:
        info = get_worker_info()
        num_workers = info.num_workers if info is not None else 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return cpus // ranks >= num_workers + 2


#: This worker's `ships_tapes()`, by its `WorkerInfo` (one object per worker process).
_worker_choice: tuple[object, bool] | None = None


def _worker_ships_tapes() -> bool:
    """`ships_tapes()`, decided once per DataLoader worker rather than for every batch (it reads the
    environment and asks the kernel for the CPUs: about 3 µs). Outside a worker, decided each time."""
    global _worker_choice
    info = get_worker_info()
    if info is None:
        return ships_tapes()
    if _worker_choice is None or _worker_choice[0] is not info:
        _worker_choice = (info, ships_tapes(info.num_workers))
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


def _pack(sources: ItemSources, datasets: np.ndarray, numbers: np.ndarray) -> _Payload:
    d, n, tape = datasets.tobytes(), numbers.tobytes(), _worker_ships_tapes()
    data, lengths = sources.pack(d, n, tape=tape)
    return data, lengths, d, n, sources.names, sources.prefixes, tape


def _unpack(payload: _Payload) -> list[Any]:
    """The items of a packed batch, decoded in Rust."""
    with paused_gc():
        items: list[Any] = decode_shipped(*payload)
        return items


class PackedRecords(Sequence[Any]):
    """The items of a batch carried as their JSON bytes: `FusionDataset.__getitems__` returns one in a
    DataLoader worker for raw records. It behaves as the list of items, decoding them on first use;
    pickled before that (sent to the main process) it ships the bytes and unpickles as the plain list
    of items, decoded in Rust. `collate` keeps it packed, as a `PackedBatch`."""

    __slots__ = ("_payload", "_items")

    def __init__(self, payload: _Payload) -> None:
        self._payload = payload
        self._items: list[Any] | None = None

    def items(self) -> list[Any]:
        """The decoded items (decoded once)."""
        if self._items is None:
            self._items = _unpack(self._payload)
        return self._items

    def __len__(self) -> int:
        return len(self._payload[1]) // 4

    def __getitem__(self, k: Any) -> Any:
        return self.items()[k]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        return self.items() == (other.items() if isinstance(other, PackedRecords) else other)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._items is None:
            return (_unpack, (self._payload,))
        return (list, (self._items,))  # decoded (and perhaps changed) here: send what is here


class _SkipCounts:
    """Skip counts by cause, and whether each cause was reported, in shared memory under a lock: one
    object for a dataset and all its DataLoader workers. Sent to a process being started (fork, spawn or
    forkserver) it stays shared; pickled otherwise it carries the counts so far into a new, separate one."""

    def __init__(self, values: Sequence[int] | None = None) -> None:
        import multiprocessing

        # a spawn-context lock can be handed to fork, spawn and forkserver children alike
        self._array = multiprocessing.get_context("spawn").Array("q", 2 * len(SKIP_CAUSES))
        if values is not None:
            self._array[:] = list(values)

    @staticmethod
    def _shared(array: Any) -> _SkipCounts:
        counts = _SkipCounts.__new__(_SkipCounts)
        counts._array = array
        return counts

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.context import get_spawning_popen

        if get_spawning_popen() is not None:
            return (_SkipCounts._shared, (self._array,))
        return (_SkipCounts, (list(self._array[:]),))

    def counts(self) -> list[int]:
        return list(self._array[: len(SKIP_CAUSES)])

    def add(self, cause: str) -> bool:
        """Count one bad sample of `cause`; True the first time `cause` is met by any process."""
        k = SKIP_CAUSES.index(cause)
        with self._array.get_lock():
            self._array[k] += 1
            first = self._array[len(SKIP_CAUSES) + k] == 0
            self._array[len(SKIP_CAUSES) + k] = 1
        return bool(first)


def _open_rgb(path: str) -> Any:
    from .images import open_path  # a file, else a member of its folder's image store

    with open_path(path) as img:
        return img.convert("RGB")


def _load_image(load: Callable[[str], Any], path: str, ds: _DatasetInfo, number: int, record: Any) -> Any:
    """`load(path)`, its failure reported as the bad sample it makes."""
    try:
        return load(path)
    except FileNotFoundError as e:
        raise _bad("missing_image", f"image not found: {path}", ds, number, record) from e
    except Exception as e:  # whatever Pillow raises, training cannot use this image
        raise _bad("unreadable_image", f"cannot decode image {path}: {e}", ds, number, record) from e


# -- batching ---------------------------------------------------------------------------------------

#: Pad values by field name; fields not listed pad with `collate`'s `default_pad`.
DEFAULT_PAD_VALUES: Mapping[str, int | float] = {"input_ids": 0, "labels": -100, "attention_mask": 0}


def collate(
    batch: Sequence[Any],
    *,
    pad_values: Mapping[str, int | float] | None = None,
    default_pad: int | float = 0,
) -> Any:
    """Collate a list of items into a batch, field by field (dicts recursively, tuples position-wise):
    tensors of one shape are stacked, 1-D tensors of different lengths are right-padded into one
    `(batch, longest)` tensor with the field's pad value (`DEFAULT_PAD_VALUES`, overridden by
    `pad_values`, else `default_pad`), and everything else (strings, numbers, lists, PIL images, tensors
    of other shapes, fields some items lack) becomes a list with one entry per item (None when absent).

    For `DataLoader(collate_fn=...)` with other pad values use `functools.partial(collate, pad_values=...)`.
    In DataLoader workers stacked and padded tensors are built directly in shared memory, as torch's
    default collate does, so sending them to the main process copies nothing.
    """
    if isinstance(batch, PackedRecords) and batch._items is None:
        return PackedBatch(batch._payload)  # raw records hold no tensors: the pad values play no part
    pads = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    return _collate_items(list(batch), pads, default_pad)


def _collate_items(items: list[Any], pads: Mapping[str, int | float], default: int | float) -> Any:
    if items and type(items[0]) is dict:
        collated = collate_records(items)  # the same rules in Rust, for JSON-like items (raw records)
        if collated is not None:
            return collated
    return _collate(items, None, pads, default)


def _unpack_collated(payload: _Payload) -> Any:
    """`collate` of a packed batch's items, built column by column in Rust."""
    with paused_gc():
        return decode_shipped(*payload, collated=True)


class PackedBatch(MutableMapping[str, Any]):
    """`collate` of a `PackedRecords`: the batch (a dict of fields) still carried as JSON bytes. Used in
    the worker it decodes and behaves as that dict; sent to the main process untouched, it arrives as
    the plain dict, decoded there in Rust."""

    __slots__ = ("_payload", "_batch")

    def __init__(self, payload: _Payload) -> None:
        self._payload = payload
        self._batch: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._batch is None:
            self._batch = _unpack_collated(self._payload)
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
            return (_unpack_collated, (self._payload,))
        return (dict, (self._batch,))


#: Values `collate` keeps as they are, checked first because most fields of raw records are these.
_LEAVES = (str, bytes, int, float, list, type(None))


def _collate(items: list[Any], key: str | None, pads: Mapping[str, int | float], default: int | float) -> Any:
    first = items[0] if items else None
    if isinstance(first, _LEAVES):
        return items
    if isinstance(first, torch.Tensor):
        if all(isinstance(x, torch.Tensor) for x in items):
            return _stack_or_pad(items, pads.get(key, default) if key is not None else default)
        return items
    if isinstance(first, Mapping):
        if all(isinstance(x, dict) or isinstance(x, Mapping) for x in items):
            keys = dict.fromkeys(itertools.chain.from_iterable(items))  # union, in first-seen order
            return {k: _collate([x.get(k) for x in items], k, pads, default) for k in keys}
        return items
    if isinstance(first, tuple) and all(isinstance(x, tuple) and len(x) == len(first) for x in items):
        fields = [_collate(list(column), key, pads, default) for column in zip(*items, strict=True)]
        return type(first)(*fields) if hasattr(first, "_fields") else tuple(fields)
    return items


def _stack_or_pad(tensors: list[torch.Tensor], pad: int | float) -> torch.Tensor | list[torch.Tensor]:
    first = tensors[0]
    if all(t.shape == first.shape for t in tensors):
        return torch.stack(tensors, out=_new_batch_tensor(first, (len(tensors), *first.shape)))
    if all(t.dim() == 1 for t in tensors) and all(t.dtype == first.dtype for t in tensors):
        out = _new_batch_tensor(first, (len(tensors), max(len(t) for t in tensors)))
        if out is None:
            out = first.new_empty((len(tensors), max(len(t) for t in tensors)))
        out.fill_(pad)
        for row, t in zip(out, tensors, strict=True):
            row[: len(t)] = t
        return out
    return tensors


def _new_batch_tensor(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """In a DataLoader worker, an uninitialised tensor of `shape` in shared memory; else None."""
    if get_worker_info() is None or like.device.type != "cpu":
        return None
    numel = 1
    for s in shape:
        numel *= s
    storage = like._typed_storage()._new_shared(numel, device=like.device)
    return like.new(storage).resize_(shape)


# -- GPU transfer -----------------------------------------------------------------------------------


class CudaPrefetcher:
    """Iterate `loader` with each batch already on the GPU: while batch k is in use, batch k+1 is
    copied on a side CUDA stream (asynchronous from pinned memory, so use `pin_memory=True`). The main
    stream waits for the copy before it is handed out (`wait_stream`) and every tensor is marked as used
    by it (`record_stream`), so the caching allocator never reuses its memory too early. Tensors are
    found in nested dicts, lists and tuples; other values pass unchanged.

    `device`: a CUDA device (default: the current one). Without CUDA (or with a CPU `device`) batches
    pass through unchanged, so the same training script runs on CPU. `len()` is the loader's.
    """

    def __init__(
        self, loader: Iterable[Any], device: torch.device | str | int | None = None, non_blocking: bool = True
    ):
        self.loader = loader
        self.non_blocking = non_blocking
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    @property
    def enabled(self) -> bool:
        """Whether batches are copied to a GPU (False: pass-through)."""
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if not self.enabled:
            return iter(self.loader)
        return self._prefetch()

    def _prefetch(self) -> Iterator[Any]:
        side = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def copy_next() -> Any:
            batch = next(batches, _END)
            if batch is _END:
                return _END
            with torch.cuda.stream(side):
                return _to_device(batch, self.device, self.non_blocking)

        upcoming = copy_next()
        while upcoming is not _END:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(side)
            batch = upcoming
            _record_stream(batch, current)
            upcoming = copy_next()  # queued on the side stream before batch k's work is queued
            yield batch


_END = object()


def _to_device(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple):
        moved = [_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    if isinstance(obj, list):
        return [_to_device(v, device, non_blocking) for v in obj]
    return obj


def _record_stream(obj: Any, stream: torch.cuda.Stream) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _record_stream(v, stream)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _record_stream(v, stream)


# -- distributed indexing ---------------------------------------------------------------------------

#: How long ranks wait for each other while others build indexes (big files take minutes each).
DISTRIBUTED_TIMEOUT = timedelta(hours=2)

#: How long a rank waits for the others to join the job's TCP store before giving up: ranks start within
#: seconds to minutes of each other, while torchrun variables left in a shell mean no other rank comes.
RENDEZVOUS_TIMEOUT = timedelta(minutes=10)


def _meet_the_other_ranks() -> tuple[Any, int, int]:
    """torch's env:// rendezvous, run on a helper thread so that the calling thread still sees Ctrl-C
    and SIGTERM (a wait inside torch's C++ store does not return to Python for signals); a rendezvous
    that does not complete within `RENDEZVOUS_TIMEOUT` is an error naming the variables it came from."""
    outcome: dict[str, Any] = {}

    def meet() -> None:
        try:
            outcome["ranks"] = next(dist.rendezvous("env://", timeout=RENDEZVOUS_TIMEOUT))
        except BaseException as e:  # handed to the calling thread
            outcome["error"] = e

    helper = threading.Thread(target=meet, name="fusion-fast rendezvous", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.2)
    if "error" in outcome:
        env = {k: os.environ.get(k, "") for k in _TORCHRUN_ENV}
        raise FusionFastError(
            "the other ranks of this torchrun job did not join at "
            f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} (RANK={env['RANK']}, WORLD_SIZE={env['WORLD_SIZE']} "
            f"from the environment): {type(outcome['error']).__name__}: {outcome['error']}; if this is not "
            "a torchrun job, unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        ) from outcome["error"]
    return outcome["ranks"]


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _Coordinator(abc.ABC):
    """One broadcast and a final barrier among the ranks of a job, for index building only."""

    rank: int
    world_size: int

    @abc.abstractmethod
    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's `value` (JSON-like), on every rank."""

    @abc.abstractmethod
    def close(self) -> None:
        """Wait for every rank, then release what was set up."""


class _GroupCoordinator(_Coordinator):
    """Beside an initialised `torch.distributed`: a new gloo group, whatever the default backend, so
    that waiting for index builds is bound by our timeout rather than, say, NCCL's."""

    def __init__(self) -> None:
        group = dist.new_group(backend="gloo", timeout=DISTRIBUTED_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self.group = group
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        dist.barrier(group=self.group)
        dist.destroy_process_group(self.group)


class _StoreCoordinator(_Coordinator):
    """Before (or without) `init_process_group`, from torchrun's environment: keys in the job's TCP
    store, so that no default process group is created (and torn down) under the training code's feet.
    Every rank must make the same sequence of calls (like collectives): call k uses key prefix k."""

    _calls = itertools.count()

    def __init__(self) -> None:
        store, self.rank, self.world_size = _meet_the_other_ranks()
        self.store = dist.PrefixStore(f"fusion-fast/index/{next(self._calls)}/", store)

    def broadcast(self, value: dict[str, Any]) -> dict[str, Any]:
        if self.rank == 0:
            self.store.set("message", json.dumps(value))
            return value
        return json.loads(self.store.get("message"))

    def close(self) -> None:
        self.store.set(f"done/{self.rank}", "1")
        self.store.wait([f"done/{r}" for r in range(self.world_size)])
        # Rank 0 may host the store: it lets go only once every other rank has stopped using it.
        if self.rank == 0:
            self.store.wait([f"left/{r}" for r in range(1, self.world_size)])
        else:
            self.store.set(f"left/{self.rank}", "1")


def _coordinator() -> _Coordinator | None:
    """How this process meets the other ranks; None when it runs alone."""
    if not dist.is_available():
        return None
    if dist.is_initialized():
        return _GroupCoordinator() if dist.get_world_size() > 1 else None
    if all(k in os.environ for k in _TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1:
        return _StoreCoordinator()
    return None


def _has_valid_index(path: Path, index_dir: str | None) -> bool:
    try:
        open_index(path, rebuild="never", index_dir=index_dir)
    except (IndexMissingError, StaleIndexError, CorruptIndexError):
        return False
    return True


def _shares(paths: list[Path], world_size: int) -> list[list[Path]]:
    """Split `paths` over `world_size` ranks with balanced bytes: biggest file first, each to the rank
    with the fewest bytes so far (the lowest rank on ties). Every rank computes the same split; each
    share keeps the order of `paths`."""
    sizes = {p: p.stat().st_size for p in paths}
    load = [0] * world_size
    owner: dict[Path, int] = {}
    for p in sorted(paths, key=lambda p: (-sizes[p], str(p))):
        rank = load.index(min(load))
        owner[p] = rank
        load[rank] += sizes[p]
    return [[p for p in paths if owner[p] == r] for r in range(world_size)]


def distributed_share(
    paths: Sequence[str | os.PathLike[str]],
    *,
    index_dir: str | os.PathLike[str] | None = None,
    only_missing: bool = True,
) -> tuple[list[Path], Callable[[], None] | None]:
    """This rank's share of the data files whose index must be built, and a callable to run once they
    are built: `(my_paths, done)`.

    Under `torch.distributed` (initialised, or just torchrun's environment: then the job's TCP store is
    used and no process group is created) rank 0 finds the files without a valid index (all of them
    with `only_missing=False`) and sends the list to every rank; each rank takes its byte-balanced share,
    so every index is built exactly once. `done()` waits for all ranks. Otherwise: `(paths, None)`.
    """
    files = [Path(p) for p in paths]
    ranks = _coordinator()
    if ranks is None:
        return files, None
    idx_dir = os.fspath(index_dir) if index_dir is not None else None
    plan: dict[str, Any] = {}
    failure: Exception | None = None
    if ranks.rank == 0:
        try:
            plan["todo"] = [str(p) for p in files if not only_missing or not _has_valid_index(p, idx_dir)]
        except Exception as e:  # the other ranks wait for rank 0's word: tell them, then raise everywhere
            failure = e
            plan["error"] = f"{type(e).__name__}: {e}"
    plan = ranks.broadcast(plan)
    if "error" in plan:
        ranks.close()
        if failure is not None:
            raise failure
        raise FusionFastError(f"rank 0 could not check which indexes to build: {plan['error']}")
    return _shares([Path(p) for p in plan["todo"]], ranks.world_size)[ranks.rank], ranks.close


def ensure_indexed(
    paths_or_yaml: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> list[JsonIndex]:
    """Make sure every data file named (files, folders, stage YAMLs) has a valid index, and open them
    all, in order.

    Under `torch.distributed` (or torchrun's environment) the files still missing an index are split
    over the ranks and each is built exactly once (on a shared filesystem), then all ranks meet at a
    barrier; each rank builds with `threads` cores (default: the machine's cores divided among the
    node's ranks). Without it, this simply opens (building as needed) each file. `JsonIndex.built` of
    the result tells which indexes this process built.
    """
    targets = [paths_or_yaml] if isinstance(paths_or_yaml, (str, os.PathLike)) else list(paths_or_yaml)
    paths = expand_targets(targets, root=os.fspath(root) if root is not None else None)
    idx_dir = os.fspath(index_dir) if index_dir is not None else None
    mine, done = distributed_share(paths, index_dir=idx_dir)
    opened: dict[Path, JsonIndex] = {}
    if done is not None:
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        try:
            for p in mine:
                opened[p] = open_index(p, index_dir=idx_dir, threads=threads)
        finally:
            done()  # reached even when a build fails, so the other ranks are not left waiting
    return [opened[p] if p in opened else open_index(p, index_dir=idx_dir, threads=threads) for p in paths]


# -- diagnostics ------------------------------------------------------------------------------------


def private_memory(pid: int | None = None, *, include_page_cache: bool = False) -> int:
    """Bytes of memory that only process `pid` (default: this one) holds (Linux `/proc/PID/smaps`):
    every private dirty page, and the private clean pages of anonymous and shared memory (`/dev/shm`,
    memfd). Clean pages of mapped files (the memory-mapped data and index files, libraries) are the
    kernel's page cache, shared by every process that maps the file and dropped under memory pressure:
    they are left out even when this process happens to be the only one to have touched them, which
    smaps reports as `Private_Clean`. `include_page_cache=True` counts them too (`Private_Clean +
    Private_Dirty` of every mapping)."""
    total = 0
    memory = True  # whether the current mapping holds memory rather than a file's page cache
    with open(f"/proc/{pid or os.getpid()}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:  # a mapping's header
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
                memory = fields[4] == "0" or path.startswith(("/dev/shm/", "/memfd:"))
            elif line.startswith("Private_Dirty:") or (
                line.startswith("Private_Clean:") and (memory or include_page_cache)
            ):
                total += int(line.split()[1]) * 1024
    return total
