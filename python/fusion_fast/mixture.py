"""`Mixture`: a training stage (FUSION / LLaVA-OneVision YAML) as one read-only sequence of records.

    mix = fusion_fast.Mixture.from_yaml("scripts/train/stage1.yaml", seed=0)
    mix[i]                       # == FUSION's list_data_dict[i] (all / first / end strategies)
    mix.lengths, mix.modality_lengths, mix.summary()

The mixture keeps, per dataset, one memory-mapped `JsonIndex` and the record numbers it selected; all
selections live in one int64 array (8 bytes per selected record), global positions map to datasets
through cumulative offsets. Records are parsed only when asked for.

Selection of one dataset entry, in this order (see docs/mixtures.md):

1. the strategy picks positions of the file: `all`, `first:N`, `end:N` exactly like FUSION; `random:N`
   keeps the N records with the smallest random keys, in file order (keys below);
2. record numbers listed in the entry's `exclude:` file are dropped (FUSION's choice is unchanged);
3. `repeat: K` appends floor(K) copies of that selection, then the ceil(frac(K) * m) records of it with the
   smallest random keys (in selection order), m the selection's size.

Random keys are the raw 64-bit outputs of `numpy.random.PCG64(SeedSequence(E))` (a stream NumPy keeps
stable across versions) where E is the first 16 bytes of
`blake2b(b"fusion-fast/mixture/v1\\0{seed}\\0{file name}\\0{occurrence}")` read little-endian; `file name` is
the data file's base name and `occurrence` counts earlier entries naming a file of the same base name, so
adding or reordering other entries, or moving the playground, never changes a dataset's subset. The
`random:` strategy draws one key per file record first; the fractional repeat then draws one per record
of the selection. Ties between keys (practically never) go to the lower position.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._core import Locator
from .errors import FusionFastIOError, MixtureError
from .exclude import read_exclude
from .index import HAS_IMAGE, HAS_VIDEO, JsonIndex, Rebuild, RecordSequence
from .index import open as open_index
from .stage import DatasetSpec, missing_message, read_stage, spec_from_entry

if TYPE_CHECKING:
    import polars as pl

#: Records per write when exporting JSON Lines.
EXPORT_BATCH = 1 << 16

#: Records per step when deriving per-record arrays: the temporaries stay in the CPU cache.


_KEY_DOMAIN = b"fusion-fast/mixture/v1"

#: Records one entry may select after `repeat` (8 bytes each in the selection array: 16 GiB). More is a
#: mistake in the YAML, reported before anything is allocated.
MAX_SELECTED = 1 << 31

#: A dataset's record numbers: an array, or (first, stop) for the contiguous range a strategy keeps.
Selection = np.ndarray | tuple[int, int]


@dataclass(frozen=True, eq=False)
class MixtureDataset:
    """One dataset entry of a mixture: its file, index and the record numbers it contributes."""

    spec: DatasetSpec
    index: JsonIndex
    #: Record numbers in the file, in mixture order (a read-only view into the mixture's one array).
    selected: np.ndarray
    #: Records the strategy chose that the entry's exclude file removed.
    excluded: int
    #: Position of this dataset's first record in the mixture.
    start: int
    #: (first, stop) when `selected` is exactly `range(first, stop)`, which lets columns be sliced.
    span: tuple[int, int] | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> Path:
        return self.spec.require_path()

    @property
    def image_folder(self) -> Path | None:
        return self.spec.image_folder

    @property
    def records(self) -> int:
        """Records in the data file."""
        return len(self.index)

    @property
    def stop(self) -> int:
        return self.start + len(self.selected)

    def __len__(self) -> int:
        return len(self.selected)

    def column(self, name: str) -> np.ndarray:
        """The index column `name` over this dataset's selection, in mixture order (a view when possible)."""
        col = self.index.columns[name]
        if self.span is not None:
            return col[self.span[0] : self.span[1]]
        return col[self.selected]

    def __repr__(self) -> str:
        return f"MixtureDataset({self.name!r}, selected={len(self.selected)}, records={self.records})"


class Mixture(RecordSequence):
    """The records of a training stage, in FUSION's order: datasets in YAML order, each one's selection
    appended. A drop-in for FUSION's `list_data_dict`, with numpy `lengths` / `modality_lengths`.

    `entries`: YAML-style dataset mappings (`json_path`, `sampling_strategy`, `repeat`, `image_folder`,
    `exclude`), bare paths, or `DatasetSpec`s. Relative paths are tried against `root` (default: the working
    directory) then, for a YAML, its folder. `seed` fixes every random choice. Indexes are opened with
    `rebuild` (see `fusion_fast.open`). Missing data files raise `MixtureError` listing each path tried.
    """

    def __init__(
        self,
        entries: Iterable[DatasetSpec | dict[str, Any] | str | os.PathLike[str]],
        *,
        root: str | os.PathLike[str] | None = None,
        seed: int = 0,
        rebuild: Rebuild = "auto",
        index_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise MixtureError(f"seed must be an integer, not {seed!r}")
        if isinstance(entries, (str, bytes, os.PathLike, dict)):
            raise MixtureError("entries must be a list of datasets; use Mixture.from_yaml for a YAML file")
        base = Path(os.path.abspath(root)) if root is not None else Path.cwd()
        specs = [
            e if isinstance(e, DatasetSpec) else spec_from_entry(e, k, root=base)
            for k, e in enumerate(entries)
        ]
        if not specs:
            raise MixtureError("a mixture needs at least one dataset")
        self._resolve(specs, int(seed), rebuild, os.fspath(index_dir) if index_dir is not None else None)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        seed: int = 0,
        rebuild: Rebuild = "auto",
        index_dir: str | os.PathLike[str] | None = None,
    ) -> Mixture:
        """The mixture a FUSION / LLaVA-OneVision stage YAML describes."""
        specs = read_stage(path, root=root)
        if not specs:
            raise MixtureError(f"{os.path.abspath(path)}: 'datasets' is empty", path=os.fspath(path))
        return cls(specs, seed=seed, rebuild=rebuild, index_dir=index_dir)

    # -- resolution ---------------------------------------------------------------------------------
    def _resolve(self, specs: list[DatasetSpec], seed: int, rebuild: Rebuild, index_dir: str | None) -> None:
        missing = [s for s in specs if s.path is None]
        if missing:
            yaml_path = missing[0].yaml_path
            raise MixtureError(missing_message(specs), path=str(yaml_path) if yaml_path else None)
        self.seed = seed
        self._rebuild: Rebuild = rebuild
        self._index_dir = index_dir
        occurrences: dict[str, int] = {}
        chosen: list[tuple[DatasetSpec, JsonIndex, Selection, int]] = []
        for spec in specs:
            file_name = Path(spec.json_path).name
            occurrence = occurrences.get(file_name, 0)
            occurrences[file_name] = occurrence + 1
            index = open_index(spec.require_path(), rebuild=rebuild, index_dir=index_dir)
            keys = _KeyStream(seed, file_name, occurrence)
            selection, excluded = _select(spec, index, keys)
            chosen.append((spec, index, selection, excluded))
        sizes = [_size(sel) for _, _, sel, _ in chosen]
        self._offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._offsets[1:])
        starts = self._offsets[:-1].tolist()
        records = np.empty(int(self._offsets[-1]), dtype=np.int64)
        for (_, _, sel, _), start, size in zip(chosen, starts, sizes, strict=True):
            records[start : start + size] = np.arange(*sel, dtype=np.int64) if isinstance(sel, tuple) else sel
        records.flags.writeable = False
        self._records = records
        self._locator = Locator(self._offsets, records)
        datasets = [
            MixtureDataset(
                spec,
                index,
                records[start : start + size],
                excluded,
                start,
                sel if isinstance(sel, tuple) else None,
            )
            for (spec, index, sel, excluded), start, size in zip(chosen, starts, sizes, strict=True)
        ]
        self.datasets: list[MixtureDataset] = datasets

    def __reduce__(self) -> tuple[Any, ...]:
        # Workers re-derive the selections (deterministic) from the specs: a few hundred bytes pickled,
        # never per-record data. Indexes are reopened as they are ("never" rebuilds behind our back).
        sizes = [len(d) for d in self.datasets]
        return (_restore, ([d.spec for d in self.datasets], self.seed, self._index_dir, sizes))

    # -- sequence -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def _get_one(self, i: int) -> Any:
        d, record = self._locate_one(i)
        return self.datasets[d].index[record]

    def get_many(self, indices: Iterable[int] | np.ndarray) -> list[Any]:
        """The records at mixture positions `indices` (negative allowed), in that order."""
        ds, records = self.locate(indices)
        if len(ds) == 0:
            return []
        first = int(ds[0])
        if (ds == first).all():
            return self.datasets[first].index.get_many(records)
        out: list[Any] = [None] * len(ds)
        for d in np.unique(ds).tolist():
            where = np.flatnonzero(ds == d)
            for pos, rec in zip(where.tolist(), self.datasets[d].index.get_many(records[where]), strict=True):
                out[pos] = rec
        return out

    def locate(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dataset numbers, record numbers in their files) of mixture positions `indices`, vectorised."""
        if isinstance(indices, range):
            pos = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
        else:
            pos = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        if pos.ndim != 1:
            raise TypeError("indices must be one-dimensional")
        pos = np.ascontiguousarray(pos)
        datasets, records = np.empty_like(pos), np.empty_like(pos)
        bad = self._locator.locate_into(pos, datasets, records)
        if bad is not None:
            n, position = len(self._records), int(pos[bad])
            position += n if position < 0 else 0  # negative positions are named counted from the start
            raise IndexError(f"mixture index {position} out of range for {n} records")
        return datasets, records

    def _locate_one(self, i: int) -> tuple[int, int]:
        found = self._locator.locate_one(i)
        if found is None:
            raise IndexError(f"mixture index {i} out of range for {len(self._records)} records")
        return found

    def source(self, i: int) -> tuple[str, int]:
        """(dataset name, record number within its file) of mixture position i."""
        d, record = self._locate_one(i)
        return self.datasets[d].name, record

    @property
    def offsets(self) -> np.ndarray:
        """Mixture position where each dataset starts, plus the total at the end (int64)."""
        return self._offsets

    @property
    def record_numbers(self) -> np.ndarray:
        """The record number, within its dataset's file, of every mixture position (int64, read-only)."""
        return self._records

    # -- metadata columns ---------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """An index column (`words`, `images`, `turns`, `flags`, `length`, `offset`) over the mixture."""
        out = np.empty(len(self), dtype=self.datasets[0].index.columns[name].dtype)
        for d in self.datasets:
            out[d.start : d.stop] = d.column(name)
        return out

    @property
    def lengths(self) -> np.ndarray:
        """FUSION's `lengths` (int64): words, plus 128 when the record has an `image` key. Computed on
        each access (no per-record cache is kept)."""
        return self._words_with_flags(modality=False)

    @property
    def modality_lengths(self) -> np.ndarray:
        """FUSION's `modality_lengths` (int64): +words with an `image` key, -words without."""
        return self._words_with_flags(modality=True)

    def _words_with_flags(self, *, modality: bool) -> np.ndarray:
        # One parallel pass in Rust per dataset, straight from the mapped words and flags columns.
        out = np.empty(len(self), dtype=np.int64)
        for d in self.datasets:
            part = out[d.start : d.stop]
            if d.span is not None:
                d.index.lengths_into(part, start=d.span[0], modality=modality)
            else:
                d.index.lengths_into(
                    part, np.ascontiguousarray(d.selected, dtype=np.int64), modality=modality
                )
        return out

    # -- reporting ----------------------------------------------------------------------------------
    def summary(self, *, total: bool = False) -> pl.DataFrame:
        """One row per dataset (and a final `total` row with `total=True`): file, records in the file,
        strategy, repeat, selected (after exclude and repeat), share of the mixture, excluded, counts of
        image / text-only / multi-image / video records and words mean / p50 / p95 (numpy's linear
        percentiles), all over the selected records."""
        import polars as pl

        n = len(self)
        rows = []
        for d in self.datasets:
            row = {
                "dataset": d.name,
                "file": str(d.path),
                "records": d.records,
                "strategy": str(d.spec.strategy),
                "repeat": float(d.spec.repeat),
                "selected": len(d),
                "share": len(d) / n if n else 0.0,
                "excluded": d.excluded,
            }
            row.update(_content_stats(d.column("flags"), d.column("images"), d.column("words")))
            rows.append(row)
        if total:
            row = {
                "dataset": "total",
                "file": None,
                "records": sum(d.records for d in self.datasets),
                "strategy": None,
                "repeat": None,
                "selected": n,
                "share": 1.0 if n else 0.0,
                "excluded": sum(d.excluded for d in self.datasets),
            }
            row.update(_content_stats(self.column("flags"), self.column("images"), self.column("words")))
            rows.append(row)
        schema = {
            "dataset": pl.String,
            "file": pl.String,
            "records": pl.Int64,
            "strategy": pl.String,
            "repeat": pl.Float64,
            "selected": pl.Int64,
            "share": pl.Float64,
            "excluded": pl.Int64,
            "image": pl.Int64,
            "text_only": pl.Int64,
            "multi_image": pl.Int64,
            "video": pl.Int64,
            "words_mean": pl.Float64,
            "words_p50": pl.Float64,
            "words_p95": pl.Float64,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")

    def export_jsonl(
        self,
        path: str | os.PathLike[str],
        *,
        batch: int = EXPORT_BATCH,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write the selected records as compact JSON Lines, in mixture order: each record's bytes from
        the mapped file with the whitespace outside strings dropped (strings, numbers and key order are
        kept as written; no parsing into Python objects), one record per line. Each line parses with
        `json.loads` to the record. Compaction runs in Rust on every core with the GIL released.
        `progress(records_done, total)` is called after each batch. The file appears
        atomically (written beside `path`, then renamed). Returns the number of bytes written."""
        from ._outputs import rename_target

        path = os.fspath(path)
        target = rename_target(path)
        tmp = f"{target}.tmp-{os.getpid()}" if target is not None else path
        written = done = 0
        try:
            # Unbuffered: Rust writes each batch to the file descriptor itself (no bytes object between).
            with open(tmp, "wb", buffering=0) as f:
                fd = f.fileno()
                for d in self.datasets:
                    core = d.index._core
                    for lo in range(0, len(d), batch):
                        hi = min(lo + batch, len(d))
                        if d.span is not None:
                            written += core.write_compact_lines(fd, start=d.span[0] + lo, count=hi - lo)
                        else:
                            selection = np.ascontiguousarray(d.selected[lo:hi])
                            written += core.write_compact_lines(fd, selection)
                        done += hi - lo
                        if progress is not None:
                            progress(done, len(self))
            if target is not None:
                os.replace(tmp, target)
        except OSError as e:
            if target is not None:
                _remove_quietly(tmp)
            raise FusionFastIOError(f"cannot write {path}: {e}", path=path) from None
        except BaseException:
            if target is not None:
                _remove_quietly(tmp)
            raise
        return written

    def __repr__(self) -> str:
        return f"Mixture({len(self.datasets)} datasets, {len(self)} records, seed={self.seed})"


# -- selection --------------------------------------------------------------------------------------


class _KeyStream:
    """The random keys of one dataset entry (see the module docstring), drawn in order."""

    def __init__(self, seed: int, file_name: str, occurrence: int) -> None:
        material = b"\0".join([_KEY_DOMAIN, str(seed).encode(), file_name.encode(), str(occurrence).encode()])
        entropy = int.from_bytes(hashlib.blake2b(material, digest_size=16).digest(), "little")
        self._bits = np.random.PCG64(np.random.SeedSequence(entropy))

    def smallest(self, n: int, k: int) -> np.ndarray:
        """Positions (ascending) of the k smallest of the next n keys."""
        return smallest_positions(self._bits.random_raw(n), k)


def smallest_positions(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the k smallest `keys`; of keys equal to the k-th, the lower positions."""
    n = len(keys)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(keys, k - 1)[k - 1]
    chosen = keys <= kth
    surplus = int(np.count_nonzero(chosen)) - k
    if surplus:
        ties = np.flatnonzero(keys == kth)
        chosen[ties[len(ties) - surplus :]] = False
    return np.flatnonzero(chosen)


def _select(spec: DatasetSpec, index: JsonIndex, keys: _KeyStream) -> tuple[Selection, int]:
    """One entry's record numbers (a (first, stop) pair when contiguous) and how many were excluded."""
    n = len(index)
    k = spec.strategy.selected(n)
    name = spec.strategy.name
    sel: Selection
    if name == "random":
        sel = keys.smallest(n, k)
    else:
        first = n - k if name == "end" else 0
        sel = (first, first + k)
    excluded = 0
    if spec.exclude is not None:
        skip = read_exclude(spec.exclude, spec.require_path())
        if len(skip) and skip[-1] >= n:
            raise MixtureError(
                f"{spec.where}: exclude file {spec.exclude} lists record {int(skip[-1])} but the file has "
                f"{n} records; was it written for another version of the data?"
            )
        arr = np.arange(sel[0], sel[1], dtype=np.int64) if isinstance(sel, tuple) else sel
        keep = ~np.isin(arr, skip)
        excluded = len(arr) - int(keep.sum())
        if excluded:
            sel = arr[keep]
    return _repeat(sel, spec.repeat, keys, spec.where), excluded


def _repeat(sel: Selection, repeat: Fraction, keys: _KeyStream, where: str) -> Selection:
    if repeat == 1:
        return sel
    m = _size(sel)
    whole = math.floor(repeat)
    extra = math.ceil((repeat - whole) * m)
    if whole * m + extra > MAX_SELECTED:
        raise MixtureError(
            f"{where}: repeat {float(repeat):g} of {m:,} records would select {whole * m + extra:,} records; "
            f"at most {MAX_SELECTED:,} fit in one mixture entry"
        )
    arr = np.arange(sel[0], sel[1], dtype=np.int64) if isinstance(sel, tuple) else sel
    parts = [arr] * whole
    if extra:
        parts.append(arr[keys.smallest(len(arr), extra)])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _size(sel: Selection) -> int:
    return sel[1] - sel[0] if isinstance(sel, tuple) else len(sel)


def _content_stats(flags: np.ndarray, images: np.ndarray, words: np.ndarray) -> dict[str, Any]:
    has_image = (flags & HAS_IMAGE) != 0
    has_video = (flags & HAS_VIDEO) != 0
    if len(words):
        p50, p95 = np.percentile(words, [50, 95]).tolist()
        mean: float | None = float(words.mean(dtype=np.float64))
    else:
        mean = p50 = p95 = None
    return {
        "image": int(has_image.sum()),
        "text_only": int((~has_image & ~has_video).sum()),
        "multi_image": int((images > 1).sum()),
        "video": int(has_video.sum()),
        "words_mean": mean,
        "words_p50": p50,
        "words_p95": p95,
    }


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _restore(specs: Sequence[DatasetSpec], seed: int, index_dir: str | None, sizes: list[int]) -> Mixture:
    mix = Mixture.__new__(Mixture)
    mix._resolve(list(specs), seed, "never", index_dir)
    if [len(d) for d in mix.datasets] != sizes:
        raise MixtureError(
            "the mixture changed while being sent to another process (a data or exclude file was "
            "modified); rebuild it"
        )
    return mix
