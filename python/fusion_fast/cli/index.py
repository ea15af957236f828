"""`fusion-fast index`, `info` and `show`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import add_index_dir_option, add_root_option, positive_int
from .output import cell, count

if TYPE_CHECKING:
    from ..indexing import IndexReport

#: On a terminal, files at least this big get a progress bar (logs get a line whenever a build runs long).
PROGRESS_MIN_BYTES = 64 << 20

#: Why an index was (re)built, as `index` and `info` say it.
REASONS = {
    "missing": "there was no index",
    "stale": "the data file changed since it was indexed",
    "corrupt": "the index was damaged",
    "other version": "the index was written by another version of fusion-fast",
    "forced": "--force",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build the index of JSON / JSONL files, folders or a stage YAML",
        description="Build (or check) the index of every data file named. A valid index is kept; a "
        "missing, stale, damaged or older one is rebuilt. Under torchrun the files are split over the "
        "ranks and each index is built once.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .json/.jsonl file, a folder or a stage YAML")
    p.add_argument("--threads", type=positive_int, default=None, help="threads per file (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid index exists")
    add_index_dir_option(p, "keep indexes here instead of next to the data")
    add_root_option(p, "folder that relative paths in a YAML start from")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=run_index)

    p = sub.add_parser(
        "info",
        help="show an index's header and a summary of its metadata",
        description="Open (building or rebuilding when needed, and saying why) the index of one data "
        "file and summarise its records. Given a stage YAML: each data file it names, resolved, with "
        "its record count and whether its index was built or reused, and the folder its relative "
        "paths resolved against.",
    )
    p.add_argument("path", metavar="FILE", help="a .json / .jsonl data file, or a stage YAML")
    add_root_option(p, "folder that relative paths in a stage YAML start from")
    add_index_dir_option(p, "where the index is kept (default: beside the data)")
    p.add_argument("--verify", action="store_true", help="recompute every column checksum")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "show",
        help="print records as JSON",
        description="Print records of a data file as indented JSON, by number (0 is the first, -1 the last).",
    )
    p.add_argument("path", metavar="FILE", help="a .json / .jsonl data file")
    p.add_argument(
        "records",
        nargs="+",
        type=int,
        metavar="N",
        help="record numbers (negative count from the end: -1 is the last)",
    )
    add_index_dir_option(p, "where the index is kept (default: beside the data)")
    p.set_defaults(func=run_show)


def _distributed_share(paths: list[Path], args: argparse.Namespace) -> tuple[list[Path], Any]:
    """Under torchrun with several ranks, this rank's share of the files to build (see
    `fusion_fast.distributed.ensure_indexed`); torch is imported only then."""
    from ..distributed import WorkerConfig, distributed_share

    job = WorkerConfig.from_env()
    if not job.needs_coordination:
        return paths, None
    try:
        import torch.distributed  # noqa: F401 - the ranks meet through it
    except Exception as e:  # missing or half-installed torch: say so instead of a traceback
        from ..errors import FusionFastError

        raise FusionFastError(
            f"running under torchrun with {job.world_size} ranks, the index builds are shared out "
            f"through torch.distributed, but torch cannot be imported ({type(e).__name__}: {e}); "
            "repair torch, or run `fusion-fast index` once outside torchrun"
        ) from e
    print(
        f"index: rank {job.rank} of {job.world_size} under torchrun: meeting the other ranks at "
        f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} to share out the builds "
        "(Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    return distributed_share(paths, index_dir=args.index_dir, only_missing=not args.force)


def _index_files(paths: list[Path], args: argparse.Namespace) -> list[IndexReport]:
    return index_with_progress(paths, force=args.force, index_dir=args.index_dir, threads=args.threads)


def index_with_progress(
    paths: list[Path], *, force: bool = False, index_dir: str | None = None, threads: int | None = None
) -> list[IndexReport]:
    """Open (building when needed) each file's index, showing the progress of builds: a bar on a
    terminal for big files, a line every few seconds in a log."""
    from ..indexing import index_file
    from .output import Progress

    reports: list[IndexReport] = []
    with Progress() as progress:
        for path in paths:
            size = path.stat().st_size
            task = progress.task(f"indexing {path.name}", size, "bytes", bar=size >= PROGRESS_MIN_BYTES)

            def update(_p: Path, done: int, _total: int, task: int = task) -> None:
                progress.update(task, done)

            try:
                _, report = index_file(
                    path,
                    rebuild="always" if force else "auto",
                    index_dir=index_dir,
                    threads=threads,
                    on_progress=update,
                )
            finally:
                progress.done(task)
            reports.append(report)
    return reports


def one_data_file(name: str, command: str, *, yaml: bool = False) -> Path:
    """The one data file `info` and `show` take (or a stage YAML, with `yaml`); `TargetError` naming
    it otherwise."""
    from ..indexing import TargetError
    from ..stage import is_stage_yaml

    path = Path(name)
    what = "one .json / .jsonl data file" + (" or a stage YAML" if yaml else "")
    if path.is_dir():
        raise TargetError(f"is a folder; `{command}` takes {what}", path=name)
    if not path.exists():
        raise TargetError("no such file; check the path", path=name)
    if is_stage_yaml(path) and not yaml:
        raise TargetError(
            f"is a stage YAML; `{command}` takes one .json / .jsonl data file (`mix` summarises a YAML)",
            path=name,
        )
    if not os.access(path, os.R_OK):
        raise TargetError("file is not readable (permission denied)", path=name)
    return path


def run_index(args: argparse.Namespace) -> int:
    from ..indexing import expand_targets
    from .output import console, human_bytes, print_json, table

    paths = expand_targets(args.paths, root=args.root)
    mine, barrier = _distributed_share(paths, args)
    reports = _index_files(mine, args)
    if barrier is not None:
        barrier()
    if args.json:
        print_json([_report_json(r) for r in reports])
        return 0
    t = table("fusion-fast index")
    for col in ("file", "records", "size", "time", "GB/s", "built because", "index"):
        t.add_column(
            col,
            justify="left" if col in ("file", "index", "built because") else "right",
            overflow="fold",  # a narrow terminal wraps long paths rather than cutting them
        )
    for r in reports:
        t.add_row(
            cell(r.path.name),
            f"{r.records:,}",
            human_bytes(r.size),
            f"{r.seconds:.2f} s" if r.built else "cached",
            f"{r.gbps:.2f}" if r.built else "-",
            r.reason or "-",
            cell(r.index_path),
        )
    console().print(t)
    return 0


def _report_json(r: IndexReport) -> dict[str, Any]:
    return {
        "path": str(r.path),
        "index": r.index_path,
        "records": r.records,
        "bytes": r.size,
        "built": r.built,
        "reason": r.reason,
        "seconds": round(r.seconds, 4),
    }


def run_info(args: argparse.Namespace) -> int:
    import numpy as np

    from ..index import BAD_CONVERSATIONS, HAS_IMAGE, HAS_VIDEO, NO_CONVERSATIONS
    from ..index import open as open_index
    from .output import console, human_bytes, note, print_json, table

    path = one_data_file(args.path, "info", yaml=True)
    args.force, args.threads = False, None
    from ..stage import is_stage_yaml

    if is_stage_yaml(path):
        return _info_stage(path, args)
    [report] = _index_files([path], args)
    idx = open_index(path, rebuild="never", index_dir=args.index_dir)
    if args.verify:
        idx.verify()
    if report.built:
        why = REASONS.get(report.reason or "", report.reason or "")
        detail = f" ({report.detail})" if report.detail and report.reason != "missing" else ""
        note(f"built the index of {path.name} in {report.seconds:.2f} s: {why}{detail}")
    columns = idx.columns
    words, flags = columns["words"], columns["flags"]
    has_image, has_video = (flags & HAS_IMAGE) != 0, (flags & HAS_VIDEO) != 0
    h = idx.header
    n = len(idx)
    summary: dict[str, Any] = {
        "data file": idx.path,
        "index file": idx.index_path,
        "format": f"{h['format']} (index format v{h['format_version']})",
        "records": n,
        "source size": h["source_size"],
        "fingerprint": h["source_fingerprint"],
        "with image key": int(has_image.sum()),
        "multi-image": int((columns["images"] > 1).sum()),
        "video": int(has_video.sum()),
        "text-only": int((~has_image & ~has_video).sum()),
        "bad/missing conversations": int((flags & (NO_CONVERSATIONS | BAD_CONVERSATIONS) != 0).sum()),
        "words mean": float(words.mean()) if n else None,
        "words p50": float(np.percentile(words, 50)) if n else None,
        "words p95": float(np.percentile(words, 95)) if n else None,
        "turns mean": float(columns["turns"].mean()) if n else None,
        "verified": "all column checksums" if args.verify else "header",
        "built": (
            REASONS.get(report.reason or "", report.reason) if report.built else "no (index was valid)"
        ),
    }
    if args.json:
        print_json({k.replace(" ", "_").replace("/", "_or_"): v for k, v in summary.items()})
        return 0
    t = table(cell(Path(idx.path).name), show_header=False)
    t.add_column("key")
    t.add_column("value", overflow="fold")
    for k, v in summary.items():
        if k in ("words p50", "words p95"):
            continue
        if k == "words mean":
            k = "words mean / p50 / p95"
            v = f"{v:.1f} / {summary['words p50']:.0f} / {summary['words p95']:.0f}" if n else "-"
        elif k == "turns mean":
            v = f"{v:.2f}" if n else "-"
        elif k == "source size":
            v = human_bytes(v)
        elif isinstance(v, int):
            v = f"{v:,}"
        t.add_row(k, cell(str(v)))
    console().print(t)
    return 0


def _info_stage(stage: Path, args: argparse.Namespace) -> int:
    """`info` on a stage YAML: per dataset, the file its json_path resolved to, its record count and
    whether its index was built (and why) or reused; then the base the relative paths resolved against."""
    from ..errors import MixtureError
    from ..stage import base_line, missing_message, read_stage
    from .output import console, print_json, table

    specs = read_stage(stage, root=args.root)
    if any(s.path is None for s in specs):
        raise MixtureError(missing_message(specs), path=str(stage))
    files = [s.path for s in specs if s.path is not None]
    unique = list(dict.fromkeys(files))
    reports = dict(zip(unique, _index_files(unique, args), strict=True))
    base = next((s.base for s in specs if s.base is not None), None)
    rows: list[dict[str, Any]] = []
    for s in specs:
        assert s.path is not None
        r = reports[s.path]
        rows.append(
            {
                "dataset": s.name,
                "json_path": s.json_path,
                "path": str(s.path),
                "records": r.records,
                "bytes": r.size,
                "built": r.built,
                "reason": r.reason,
                "index": r.index_path,
            }
        )
    if args.json:
        print_json(
            {
                "stage": os.path.normpath(os.path.abspath(stage)),
                "base": str(base.path) if base is not None else None,
                "base_why": base.why if base is not None else None,
                "datasets": rows,
            }
        )
        return 0
    t = table(f"{stage.name}: {len(rows)} dataset{'' if len(rows) == 1 else 's'}")
    for col in ("dataset", "records", "index", "file"):
        t.add_column(col, justify="right" if col == "records" else "left", overflow="fold")
    for row in rows:
        why = REASONS.get(row["reason"] or "", row["reason"] or "")
        t.add_row(
            cell(row["dataset"]),
            f"{row['records']:,}",
            f"built: {why}" if row["built"] else "reused",
            cell(row["path"]),
        )
    out = console()
    out.print(t)
    if (line := base_line(specs)) is not None:
        out.print(cell(line))
    return 0


def run_show(args: argparse.Namespace) -> int:
    import json

    from ..index import open as open_index
    from . import UsageError

    path = one_data_file(args.path, "show")
    idx = open_index(path, index_dir=args.index_dir)
    n = len(idx)
    wrong = [i for i in args.records if not -n <= i < n]
    if wrong:
        valid = f"0 to {n - 1} (or -{n} to -1 from the end)" if n else "none: the file holds no records"
        raise UsageError(
            f"{cell(path.name)} has {count(n, 'record')}: no record {wrong[0]}; valid numbers: {valid}"
        )
    out = sys.stdout
    for i in args.records:
        out.write(json.dumps(idx[i], ensure_ascii=False, indent=2) + "\n")
    return 0
