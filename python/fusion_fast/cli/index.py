"""`fusion-fast index`, `info` and `show`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from ..index import BAD_CONVERSATIONS, HAS_IMAGE, HAS_VIDEO, NO_CONVERSATIONS, Rebuild
from ..index import open as open_index
from ..indexing import IndexReport, expand_targets, index_file
from .output import console, error_console, human_bytes

#: Files at least this big get a progress bar.
PROGRESS_MIN_BYTES = 64 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build the index of JSON / JSONL files, folders or a stage YAML")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .json/.jsonl file, a folder or a stage YAML")
    p.add_argument("--threads", type=int, default=None, help="threads per file (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid index exists")
    p.add_argument("--index-dir", default=None, help="keep indexes here instead of next to the data")
    p.add_argument("--root", default=None, help="folder that relative paths in a YAML start from")
    p.set_defaults(func=run_index)

    p = sub.add_parser("info", help="show an index's header and a summary of its metadata")
    p.add_argument("path", metavar="FILE")
    p.add_argument("--index-dir", default=None)
    p.add_argument("--verify", action="store_true", help="recompute every column checksum")
    p.set_defaults(func=run_info)

    p = sub.add_parser("show", help="print records as JSON")
    p.add_argument("path", metavar="FILE")
    p.add_argument("records", nargs="+", type=int, metavar="N", help="record numbers (negative from the end)")
    p.add_argument("--index-dir", default=None)
    p.set_defaults(func=run_show)


def _distributed_share(paths: list[Path], args: argparse.Namespace) -> tuple[list[Path], object | None]:
    """Under torchrun, this rank's share of the files to build (see `fusion_fast.torch.ensure_indexed`)."""
    try:
        from ..torch import distributed_share
    except ImportError:  # torch is optional: without it there is no torchrun either
        return paths, None
    return distributed_share(paths, index_dir=args.index_dir, only_missing=not args.force)


def run_index(args: argparse.Namespace) -> int:
    paths = expand_targets(args.paths, root=args.root)
    if not paths:
        error_console().print("no .json / .jsonl files found")
        return 1
    mine, barrier = _distributed_share(paths, args)
    reports: list[IndexReport] = []
    rebuild: Rebuild = "always" if args.force else "auto"
    big = any(p.stat().st_size >= PROGRESS_MIN_BYTES for p in mine)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=error_console(),
        disable=not big,
        transient=True,
    ) as bar:
        for path in mine:
            task = bar.add_task(path.name, total=path.stat().st_size)

            def update(_p: Path, done: int, total: int, task=task) -> None:
                bar.update(task, completed=done, total=total)

            _, report = index_file(
                path, rebuild=rebuild, index_dir=args.index_dir, threads=args.threads, on_progress=update
            )
            reports.append(report)
    if barrier is not None:
        barrier()  # type: ignore[operator]
    table = Table(title="fusion-fast index")
    for col in ("file", "records", "size", "time", "GB/s", "index"):
        table.add_column(col, justify="left" if col in ("file", "index") else "right")
    for r in reports:
        table.add_row(
            r.path.name,
            f"{r.records:,}",
            human_bytes(r.size),
            f"{r.seconds:.2f} s" if r.built else "cached",
            f"{r.gbps:.2f}" if r.built else "-",
            r.index_path,
        )
    console().print(table)
    return 0


def run_info(args: argparse.Namespace) -> int:
    idx = open_index(args.path, index_dir=args.index_dir, rebuild="auto", verify=args.verify or None)
    columns = idx.columns
    words, flags = columns["words"], columns["flags"]
    has_image, has_video = (flags & HAS_IMAGE) != 0, (flags & HAS_VIDEO) != 0
    h = idx.header
    table = Table(title=f"{Path(idx.path).name}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = {
        "data file": idx.path,
        "index file": idx.index_path,
        "format": f"{h['format']} (index format v{h['format_version']})",
        "records": f"{len(idx):,}",
        "source size": human_bytes(h["source_size"]),
        "fingerprint": h["source_fingerprint"],
        "with image key": f"{int(has_image.sum()):,}",
        "multi-image": f"{int((columns['images'] > 1).sum()):,}",
        "video": f"{int(has_video.sum()):,}",
        "text-only": f"{int((~has_image & ~has_video).sum()):,}",
        "bad/missing conversations": f"{int((flags & (NO_CONVERSATIONS | BAD_CONVERSATIONS) != 0).sum()):,}",
        "words mean / p50 / p95": (
            f"{words.mean():.1f} / {np.percentile(words, 50):.0f} / {np.percentile(words, 95):.0f}"
            if len(idx)
            else "-"
        ),
        "turns mean": f"{columns['turns'].mean():.2f}" if len(idx) else "-",
        "verified": "all column checksums" if args.verify else "header",
    }
    for k, v in rows.items():
        table.add_row(k, str(v))
    console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    idx = open_index(args.path, index_dir=args.index_dir)
    for n in args.records:
        print(json.dumps(idx[n], ensure_ascii=False, indent=2))
    return 0
