"""`fusion-fast mix`: what a stage YAML selects, per dataset, and an optional JSON Lines export."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from ..mixture import Mixture
from .output import console, human_bytes

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
    p.add_argument("--root", default=None, help="folder that relative paths start from (default: cwd)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random: strategies and repeats")
    p.add_argument("--index-dir", default=None, help="where the indexes are kept (default: beside the data)")
    p.add_argument("--export", metavar="OUT.jsonl", default=None, help="write the selected records here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    mix = Mixture.from_yaml(args.stage, root=args.root, seed=args.seed, index_dir=args.index_dir)
    resolved = time.perf_counter() - started
    summary = mix.summary(total=True)
    table = Table(title=f"{Path(args.stage).name}: {len(mix):,} records (seed {mix.seed})")
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="left" if header in ("dataset", "strategy") else "right")
    rows = summary.to_dicts()
    for k, row in enumerate(rows):
        if k == len(rows) - 1:
            table.add_section()
        table.add_row(*("-" if row[key] is None else render(row[key]) for key, _, render in _COLUMNS))
    out = console()
    out.print(table)
    out.print(f"resolved in {resolved * 1e3:.0f} ms")
    if args.export:
        started = time.perf_counter()
        size = mix.export_jsonl(args.export)
        seconds = time.perf_counter() - started
        rate = f"{human_bytes(size / seconds)}/s" if seconds > 0 else "-"
        out.print(
            f"wrote {len(mix):,} records ({human_bytes(size)}) to {args.export} in {seconds:.2f} s ({rate})"
        )
    return 0
