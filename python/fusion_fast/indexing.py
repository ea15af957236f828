"""Indexing many files: expand CLI targets (files, folders, stage YAMLs) and build their indexes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import _core
from .errors import FusionFastError
from .index import JsonIndex, Rebuild
from .index import open as open_index
from .stage import DATA_SUFFIXES, is_stage_yaml, read_stage


def expand_targets(targets: Iterable[str | os.PathLike[str]], *, root: str | None = None) -> list[Path]:
    """Data files named by `targets`: files as they are, folders searched recursively for
    .json / .jsonl files, stage YAMLs replaced by the data files they list. Order kept, no duplicates."""
    out: dict[Path, None] = {}
    for t in targets:
        p = Path(t)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in DATA_SUFFIXES:
                    out[f.resolve()] = None
        elif is_stage_yaml(p):
            for spec in read_stage(p, root=root):
                out[spec.require_path()] = None
        elif p.is_file():
            out[p.resolve()] = None
        else:
            raise FusionFastError(f"no such file or folder: {p}", path=str(p))
    return list(out)


@dataclass
class IndexReport:
    path: Path
    records: int
    size: int
    seconds: float
    built: bool
    index_path: str

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
    """Open (building if needed) one index; `on_progress(path, bytes_done, bytes_total)` is called
    from a helper thread while the build runs in this one, so that Ctrl-C (which Python delivers to
    the main thread) stops the build."""
    p = Path(path)
    size = p.stat().st_size
    started = time.perf_counter()
    if on_progress is None:
        idx = open_index(p, rebuild=rebuild, index_dir=index_dir, threads=threads)
    else:
        progress = _core.Progress()
        done = threading.Event()

        def report() -> None:
            while not done.wait(poll_seconds):
                on_progress(p, progress.value, size)

        t = threading.Thread(target=report, name=f"fusion-fast progress {p.name}", daemon=True)
        t.start()
        try:
            idx = open_index(p, rebuild=rebuild, index_dir=index_dir, threads=threads, progress=progress)
        finally:
            done.set()
            t.join()
        on_progress(p, size, size)
    seconds = idx.build_seconds if idx.built else time.perf_counter() - started
    assert isinstance(idx, JsonIndex)
    return idx, IndexReport(p, len(idx), size, seconds, idx.built, idx.index_path)
