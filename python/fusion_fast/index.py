"""`fusion_fast.open` and `JsonIndex`: random access to the records of one huge JSON / JSONL file."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from . import _core
from ._core import (  # noqa: F401 - the bits of the `flags` column (rust/record.rs), for the package
    BAD_CONVERSATIONS,
    BAD_IMAGE,
    HAS_IMAGE,
    HAS_VIDEO,
    NO_CONVERSATIONS,
    NOT_OBJECT,
    SATURATED,
)

if TYPE_CHECKING:
    import polars as pl

Rebuild = Literal["auto", "never", "always"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while JSON values are built: they cannot form reference
    cycles, so its passes over thousands of fresh containers are pure cost (measured: about 40% of
    `get_many`)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def open(  # noqa: A001 - the public name mirrors builtins.open on purpose
    path: str | os.PathLike[str],
    *,
    rebuild: Rebuild = "auto",
    index_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    verify: bool | None = None,
    progress: _core.Progress | None = None,
) -> JsonIndex:
    """Open the index of a `.json` array or `.jsonl` file, building it first when needed.

    `rebuild`: "auto" builds a missing, stale or corrupt index; "never" raises instead; "always"
    rebuilds. The index is stored next to the file, or in `$FUSION_FAST_CACHE` (else the XDG cache
    folder) when that folder is read-only, or in `index_dir`. Building uses `threads` cores (all by
    default) with the GIL released. `verify=True` checks every column checksum on open (by default only
    small indexes are checked fully; headers always are).
    """
    path = os.fspath(path)
    index_dir = os.fspath(index_dir) if index_dir is not None else None
    core = _core.open_index(
        path, rebuild=rebuild, index_dir=index_dir, threads=threads, verify=verify, progress=progress
    )
    return JsonIndex(core, index_dir=index_dir)


class RecordSequence(Sequence[Any]):
    """A read-only sequence of records: subclasses give `__len__`, `_get_one(i)` and `get_many`."""

    def _get_one(self, i: int) -> Any:
        raise NotImplementedError

    def get_many(self, indices: Iterable[int] | np.ndarray) -> list[Any]:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return self.get_many(range(*i.indices(len(self))))
        return self._get_one(i)

    def __iter__(self) -> Iterator[Any]:
        # Batches keep iteration fast without materialising everything.
        n = len(self)
        for start in range(0, n, 1024):
            yield from self.get_many(range(start, min(start + 1024, n)))


class JsonIndex(RecordSequence):
    """The records of one data file, memory-mapped. `idx[i]` parses record i in Rust.

    Both files are mapped once, by the Rust core; `raw`, `columns` and exports are views of those
    mappings. A data file that shrinks or is rewritten in place while open makes reads raise
    `StaleIndexError` naming it, never crash the process (see `rust/mapping.rs`)."""

    def __init__(self, core: _core.Index, *, index_dir: str | None = None) -> None:
        self._core = core
        self._index_dir = index_dir
        self._columns: dict[str, np.ndarray] | None = None
        self._lengths: np.ndarray | None = None
        self._modality_lengths: np.ndarray | None = None

    # -- identity -----------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._core.source_path

    @property
    def index_path(self) -> str:
        return self._core.index_path

    @property
    def built(self) -> bool:
        """Whether opening this index built it."""
        return self._core.built

    @property
    def build_seconds(self) -> float:
        return self._core.build_seconds

    @property
    def header(self) -> dict[str, Any]:
        return self._core.header()

    def __repr__(self) -> str:
        return f"JsonIndex({self.path!r}, records={len(self)})"

    def __reduce__(self):
        # Workers reopen the same files: a header check and two maps, no per-record data copied.
        return (_reopen, (self.path, self._index_dir))

    # -- records ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._core)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if type(i) is int:  # random access, the hot path: straight to Rust
            return self._core.get(i)
        return super().__getitem__(i)

    def _get_one(self, i: int) -> Any:
        return self._core.get(i)

    def get_many(self, indices: Iterable[int] | np.ndarray) -> list[Any]:
        """The records at `indices` (negative allowed), parsed in one call."""
        if isinstance(indices, range):
            arr = np.arange(indices.start, indices.stop, indices.step, dtype="<i8")
        else:
            arr = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype="<i8")
        with paused_gc():
            return self._core.get_many(arr.tobytes())

    def raw(self, i: int) -> memoryview:
        """The record's bytes, zero-copy, as a read-only view into the mapped data file. Raises
        `StaleIndexError` when the file changed since it was opened; a view kept while the file
        shrinks reads zeros where its pages vanished (the process never crashes)."""
        return self._core.raw(i)

    def span(self, i: int) -> tuple[int, int]:
        """(byte offset, byte length) of record i in the data file."""
        return self._core.span(i)

    def verify(self) -> None:
        """Recompute every column checksum; raises `CorruptIndexError` on a mismatch."""
        self._core.verify()

    # -- columns ------------------------------------------------------------------------------------
    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Every stored column as a read-only numpy array mapped from the index file (zero-copy)."""
        if self._columns is None:
            # The buffer and the column table come from one open index, so they describe the same
            # file even after the index is rebuilt and replaced on disk.
            self._core.populate_index()
            index_map = memoryview(self._core.index_buffer())
            columns = {
                name: np.frombuffer(index_map, dtype=np.dtype(dtype), count=count, offset=offset)
                for name, dtype, offset, count in self._core.column_table()
            }
            self._core.check()
            self._columns = columns
        return self._columns

    @property
    def has_image(self) -> np.ndarray:
        """Whether each record has the key `image` (even `null`)."""
        return (self.columns["flags"] & HAS_IMAGE).astype(bool)

    @property
    def lengths(self) -> np.ndarray:
        """FUSION's `lengths`: words + 128 when the record has an `image` key, else words (int64)."""
        if self._lengths is None:
            self._lengths = np.empty(len(self), dtype=np.int64)
            self._core.lengths_into(self._lengths)
        return self._lengths

    @property
    def modality_lengths(self) -> np.ndarray:
        """FUSION's `modality_lengths`: +words with an `image` key, -words without (int64)."""
        if self._modality_lengths is None:
            self._modality_lengths = np.empty(len(self), dtype=np.int64)
            self._core.lengths_into(self._modality_lengths, modality=True)
        return self._modality_lengths

    def lengths_into(
        self, out: np.ndarray, selection: np.ndarray | None = None, *, start: int = 0, modality: bool = False
    ) -> None:
        """Write FUSION's lengths (or modality lengths) of the records numbered `selection` (int64), or of
        records `start .. start + len(out)`, into the int64 array `out`, in one parallel pass in Rust."""
        self._core.lengths_into(out, selection, start=start, modality=modality)

    def to_polars(self) -> pl.DataFrame:
        """One row per record with its metadata."""
        import polars as pl

        c = self.columns
        flags = c["flags"]
        return pl.DataFrame(
            {
                "record": np.arange(len(self), dtype=np.int64),
                "offset": c["offset"],
                "length": c["length"],
                "words": c["words"],
                "images": c["images"],
                "turns": c["turns"],
                "has_image": (flags & HAS_IMAGE) != 0,
                "has_video": (flags & HAS_VIDEO) != 0,
                "conversations_ok": (flags & (NO_CONVERSATIONS | BAD_CONVERSATIONS)) == 0,
                "is_object": (flags & NOT_OBJECT) == 0,
                "flags": flags,
            }
        )


def _reopen(path: str, index_dir: str | None) -> JsonIndex:
    return open(path, index_dir=index_dir)
