"""`FusionDataset`: a map-style torch `Dataset` over a mixture, with the bad-sample policy (skip or raise,
shared skip counts) and image loading. Raw records leave DataLoader workers packed (`shipping`)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from torch.utils.data import Dataset

from .._core import ItemSources, Shipped
from ..distributed import in_dataloader_worker
from ..errors import RecordError
from ..index import BAD_CONVERSATIONS, BAD_IMAGE, NO_CONVERSATIONS, NOT_OBJECT, JsonIndex, paused_gc
from ..mixture import Mixture
from ..stage import is_stage_yaml
from ..vision_device import ShippedImage
from .shipping import PackedRecords, _pack, _worker_ships_tapes

__all__ = ["FusionDataset", "IMAGE_KEY", "PIXELS_KEY", "SKIP_CAUSES"]

# The name users configure (docs/training.md), whichever module of the package logs.
logger = logging.getLogger("fusion_fast.torch")

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
    for a list of images); a processor with a `ship` method (`FusionImageProcessor`) is called through
    it, so that with `device="cuda"` a JPEG stays compressed (a `fusion_fast.vision_device.ShippedImage`)
    until `collate` packs the batch and `CudaPrefetcher` decodes it on the GPU. `transform(item)`, when
    given, runs last and its result is the item.

    Bad samples: a record that is not an object, has no well-formed `conversations` or a malformed
    `image` (all read from the index, no parsing needed), an image that is missing or cannot be decoded
    (with `load_images=True` or `image_processor`), or a `RecordError` raised by `transform`. With
    `on_error="raise"` a `RecordError` names the dataset, record number, id and path. With
    `on_error="skip"` item i is replaced by the next good sample (i+1, i+2, ... wrapping around),
    deterministically; `skipped` counts the bad samples requested (a bad sample met only while looking
    for a replacement is not counted then, so over an epoch each bad sample counts once) and
    `skip_causes` counts them by cause. The counters live in shared memory: read in the main process they
    include every DataLoader worker's skips (fork or spawn). The first bad sample is logged as a
    warning, once for the dataset and all its workers, whatever its cause.

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
        # asked here, in the main process, so that workers never probe CUDA and the fallback warning
        # (CUDA or torchvision missing) is given once; the answer travels with the processor
        self._ships = bool(getattr(image_processor, "ships_compressed", False))
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
            if in_dataloader_worker():
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

    def _pack_positions(self, indices: Sequence[int]) -> Shipped | None:
        """A worker's batch located, checked and packed in one call to Rust (workers share the two
        cores with the main process, so their time per batch counts); None when a sample is bad or an
        index out of range, which `_locate_good` then handles."""
        sources, mix, tape = self._item_sources(), self.mixture, _worker_ships_tapes()
        return sources.pack_positions(indices, mix.offsets, mix.record_numbers, _ANY_BAD_FLAG, tape=tape)

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
        (`fusion_fast.vision.FusionImageProcessor` takes either), through its `ship` method when it has
        one (the compressed JPEG for the device to decode, or the CPU result: never a CUDA tensor)."""
        from ..images import read_path

        process: Callable[[Any], Any] | None = self.image_processor
        assert process is not None
        source = path if os.path.isfile(path) else read_path(path)
        if self._ships:
            # a JPEG shipped to the device is checked in the worker, so that a broken one meets this
            # dataset's bad-sample policy; with on_error="raise" the device's RecordError is the policy
            return process.ship(source, validate=self.on_error != "raise")  # type: ignore[attr-defined]
        process = getattr(process, "ship", process)
        return process(source)

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
                if self._ships:
                    _name_shipped(done, paths, ds, number, item)
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
                "skipping bad samples, replacing each with the next good one; first (%s): %s "
                "(further ones, of any cause, are only counted in FusionDataset.skipped and skip_causes)",
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
    message = _describe(ds, number, record, detail)
    return _BadSample(cause, RecordError(message, path=ds.data_path, record=number))


def _describe(ds: _DatasetInfo, number: int, record: Any, detail: str) -> str:
    record_id = record.get("id") if isinstance(record, dict) else None
    return f"dataset {ds.name!r}, record {number} (id {record_id!r}): {detail}"


def _name_shipped(done: list[Any], paths: list[str], ds: _DatasetInfo, number: int, record: Any) -> None:
    """Give each compressed image the message the CPU path would give if it cannot be decoded: the
    device decodes it after the batch has left the dataset, which then reports it as a `RecordError`."""
    for value, path in zip(done, paths, strict=True):
        if isinstance(value, ShippedImage):
            value.where = (ds.data_path, number, _describe(ds, number, record, f"cannot decode image {path}"))


def _prefix(folder: str | None) -> str:
    if not folder:
        return ""
    return folder if folder.endswith("/") else folder + "/"


class _SkipCounts:
    """Skip counts by cause, and whether the first bad sample was reported, in shared memory under a lock: one
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
        """Count one bad sample of `cause`; True for the first bad sample met by any process, whatever
        its cause (the warning is logged once per run)."""
        k = SKIP_CAUSES.index(cause)
        with self._array.get_lock():
            self._array[k] += 1
            first = self._array[len(SKIP_CAUSES)] == 0
            self._array[len(SKIP_CAUSES)] = 1
        return bool(first)


def _open_rgb(path: str) -> Any:
    from ..images import open_path  # a file, else a member of its folder's image store

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
