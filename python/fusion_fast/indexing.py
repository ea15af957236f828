"""Indexing many files: expand CLI targets (files, folders, stage YAMLs) and build their indexes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import _core
from .errors import CorruptIndexError, FusionFastError, IndexMissingError, StaleIndexError
from .index import JsonIndex, Rebuild
from .index import open as open_index
from .stage import DATA_SUFFIXES, is_stage_yaml, read_stage


class TargetError(FusionFastError):
    """A path given to a command does not exist, or is neither a stage YAML, a data file nor a folder,
    or names no data files."""


def expand_targets(targets: Iterable[str | os.PathLike[str]], *, root: str | None = None) -> list[Path]:
    """Data files named by `targets`: files as they are, folders searched recursively for
    .json / .jsonl files, stage YAMLs replaced by the data files they list. Order kept, no duplicates.
    Raises `TargetError` for a path that does not exist or a folder without data files."""
    out: dict[Path, None] = {}
    for t in targets:
        p = Path(t)
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in DATA_SUFFIXES]
            if not found:
                raise TargetError(
                    "folder holds no .json / .jsonl data files (searched every subfolder)", path=str(p)
                )
            for f in found:
                out[f.resolve()] = None
        elif is_stage_yaml(p):
            if not p.exists():
                raise TargetError("no such stage YAML; check the path", path=str(p))
            for spec in read_stage(p, root=root):
                out[spec.require_path()] = None
        elif p.is_file():
            out[p.resolve()] = None
        elif p.exists():
            raise TargetError("not a regular file, a folder or a stage YAML", path=str(p))
        else:
            raise TargetError("no such file or folder; check the path", path=str(p))
    return list(out)


@dataclass
class IndexReport:
    path: Path
    records: int
    size: int
    seconds: float
    built: bool
    index_path: str
    #: Why the index was built ("missing", "stale", "corrupt", "other version", "forced"), else None.
    reason: str | None = None
    #: The error that made the existing index unusable, when there was one.
    detail: str | None = None

    @property
    def gbps(self) -> float:
        return self.size / self.seconds / 1e9 if self.built and self.seconds > 0 else 0.0


ProgressCallback = Callable[[Path, int, int], None]


def index_file(
    path: str | os.PathLike[str],
    *,
    rebuild: Rebuild = "auto",
    index_dir: str | None = None,
    threads: int | None = None,
    on_progress: ProgressCallback | None = None,
    poll_seconds: float = 0.1,
) -> tuple[JsonIndex, IndexReport]:
    """Open (building if needed) one index, and say whether it was built and why.

    The build runs in the calling thread (so Ctrl-C and SIGTERM reach it as they reach any other
    work); `on_progress(path, bytes_done, bytes_total)` is called every `poll_seconds` from a helper
    thread while it runs, and once at the end."""
    p = Path(path)
    size = p.stat().st_size
    started = time.perf_counter()
    reason: str | None = "forced" if rebuild == "always" else None
    detail: str | None = None
    idx: JsonIndex | None = None
    if rebuild == "auto":
        try:  # a valid index is opened here; otherwise the error says why it must be rebuilt
            idx = open_index(p, rebuild="never", index_dir=index_dir)
        except IndexMissingError:
            reason = "missing"
        except StaleIndexError as e:
            reason, detail = "stale", e.message
        except CorruptIndexError as e:
            reason, detail = ("other version" if "format version" in e.message else "corrupt"), e.message
    if idx is None:
        idx = _build(p, size, rebuild, index_dir, threads, on_progress, poll_seconds)
    seconds = idx.build_seconds if idx.built else time.perf_counter() - started
    return idx, IndexReport(
        p, len(idx), size, seconds, idx.built, idx.index_path, reason if idx.built else None, detail
    )


def _build(
    p: Path,
    size: int,
    rebuild: Rebuild,
    index_dir: str | None,
    threads: int | None,
    on_progress: ProgressCallback | None,
    poll_seconds: float,
) -> JsonIndex:
    if on_progress is None:
        return open_index(p, rebuild=rebuild, index_dir=index_dir, threads=threads)
    progress = _core.Progress()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(poll_seconds):
            on_progress(p, progress.value, size)

    reporter = threading.Thread(target=report, name=f"fusion-fast progress {p.name}", daemon=True)
    reporter.start()
    try:
        idx = open_index(p, rebuild=rebuild, index_dir=index_dir, threads=threads, progress=progress)
    finally:
        stop.set()
        reporter.join()
    on_progress(p, size, size)
    return idx
