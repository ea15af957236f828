"""`fusion-fast mix`: what a stage YAML selects, per dataset, and an optional JSON Lines export."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .args import add_index_dir_option, add_root_option, check_not_input, check_writable, seed

#: (summary column, header, how to render a value).
_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("dataset", "dataset", str),
    ("records", "records", "{:,}".format),
    ("strategy", "strategy", str),
    ("repeat", "repeat", "{:g}".format),
    ("selected", "selected", "{:,}".format),
    ("share", "share", "{:.1%}".format),
    ("excluded", "excluded", "{:,}".format),
    ("image", "image", "{:,}".format),
    ("text_only", "text-only", "{:,}".format),
    ("multi_image", "multi-image", "{:,}".format),
    ("video", "video", "{:,}".format),
    ("words_mean", "words mean", "{:.1f}".format),
    ("words_p50", "p50", "{:.0f}".format),
    ("words_p95", "p95", "{:.0f}".format),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mix", help="show what a stage YAML selects from each dataset; export it as JSONL")
    p.add_argument("stage", metavar="STAGE.yaml", help="a FUSION / LLaVA-OneVision stage YAML")
    add_root_option(p, "folder that relative paths start from (default: cwd)")
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of the random: strategies and repeats (default: 0)"
    )
    add_index_dir_option(p, "where the indexes are kept (default: beside the data)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--export", metavar="OUT.jsonl", default=None, help="write the selected records here")
    p.set_defaults(func=run)


def _stage_yaml(name: str) -> Path:
    """The stage YAML `mix` takes; `TargetError` saying what was given instead."""
    from ..indexing import TargetError
    from ..stage import DATA_SUFFIXES

    path = Path(name)
    if path.is_dir():
        raise TargetError(
            "is a folder; `mix` takes a stage YAML (for a folder of data files: `fusion-fast check` "
            "or `fusion-fast index`)",
            path=name,
        )
    if not path.exists():
        raise TargetError("no such stage YAML; check the path", path=name)
    if path.suffix.lower() in DATA_SUFFIXES:
        raise TargetError(
            "is a data file; `mix` takes a stage YAML listing data files (`fusion-fast info` "
            "summarises one data file)",
            path=name,
        )
    return path


def run(args: argparse.Namespace) -> int:
    from ..mixture import Mixture
    from ..stage import base_line, read_stage
    from .index import index_with_progress
    from .output import cell, console, count, human_bytes, note, print_json, table

    stage = _stage_yaml(args.stage)
    if args.export:
        check_writable(args.export, "--export")
    # Missing indexes are built first, with progress: resolving a mixture opens every data file's index.
    found = [spec.path for spec in read_stage(stage, root=args.root) if spec.path is not None]
    if args.export:
        check_not_input(args.export, "--export", [stage, *found])
    index_with_progress(list(dict.fromkeys(found)), index_dir=args.index_dir)
    started = time.perf_counter()
    mix = Mixture.from_yaml(stage, root=args.root, seed=args.seed, index_dir=args.index_dir)
    resolved = time.perf_counter() - started
    summary = mix.summary(total=True)
    rows = summary.to_dicts()
    out = console()
    if args.json:
        print_json({"stage": str(stage), "seed": mix.seed, "records": len(mix), "datasets": rows})
    else:
        t = table(f"{cell(stage.name)}: {count(len(mix), 'record')} (seed {mix.seed})")
        for _, header, _ in _COLUMNS:
            t.add_column(
                header,
                justify="left" if header in ("dataset", "strategy") else "right",
                overflow="fold" if header == "dataset" else "ellipsis",
            )
        for k, row in enumerate(rows):
            if k == len(rows) - 1:
                t.add_section()
            t.add_row(*("-" if row[key] is None else cell(render(row[key])) for key, _, render in _COLUMNS))
        out.print(t)
        out.print(f"resolved in {resolved * 1e3:.0f} ms")
        if (line := base_line([d.spec for d in mix.datasets])) is not None:
            out.print(cell(line))
    if args.export:
        from .output import Progress

        started = time.perf_counter()
        with Progress() as progress:
            task = progress.task(f"exporting to {args.export}", len(mix), "records")
            size = mix.export_jsonl(args.export, progress=lambda done, _total: progress.update(task, done))
            progress.done(task)
        seconds = time.perf_counter() - started
        rate = f"{human_bytes(size / seconds)}/s" if seconds > 0 else "-"
        records = count(len(mix), "record")
        done = f"wrote {records} ({human_bytes(size)}) to {args.export} in {seconds:.2f} s ({rate})"
        if args.json:
            note(done)  # standard output holds the JSON document alone
        else:
            out.print(done)
    return 0
