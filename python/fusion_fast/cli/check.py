"""`fusion-fast check`: report broken records, missing or corrupt images and layout mistakes.

Exit status: 0 clean, 1 problems found, 2 usage error (bad arguments, a missing or unknown target,
an unreadable stage YAML, an output file that cannot be written).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import add_root_option, check_not_input, check_writable, existing_folder, non_negative_int

if TYPE_CHECKING:
    from ..check import CheckReport, Problem

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="find broken records, missing or corrupt images and layout mistakes before training",
        description="Check every record of a stage YAML's data files, a .json/.jsonl file or a folder.",
        epilog="exit status: 0 clean, 1 problems found, 2 usage error, 130 interrupted",
    )
    p.add_argument(
        "target", metavar="TARGET", help="a stage YAML, a .json/.jsonl file or a folder (playground)"
    )
    add_root_option(p, "folder that relative paths in a YAML start from (default: cwd)")
    p.add_argument(
        "--image-folder",
        type=existing_folder,
        default=None,
        metavar="DIR",
        help="where relative image paths start, for datasets without their own image_folder",
    )
    p.add_argument("--decode", action="store_true", help="also open and decode every image (Pillow)")
    p.add_argument(
        "--json",
        default=None,
        metavar="REPORT.json",
        help="write every problem to this file as JSON (`-`: print it on standard output, not the table)",
    )
    p.add_argument(
        "--write-exclude",
        default=None,
        metavar="FILE",
        help="write the bad record numbers per data file, for a stage entry's `exclude: FILE`",
    )
    p.add_argument(
        "--examples",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="examples shown per kind of problem (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..check import run_check
    from ..stage import base_line, is_stage_yaml, read_stage
    from .output import Progress, console, note

    # Output paths are checked before the work: a check of a large playground takes minutes.
    if args.json not in (None, "-"):
        check_writable(args.json, "--json")
        check_not_input(args.json, "--json", [Path(args.target)])
    if args.write_exclude is not None:
        check_writable(args.write_exclude, "--write-exclude")
        check_not_input(args.write_exclude, "--write-exclude", [Path(args.target)])
    with Progress() as progress:
        report = run_check(
            args.target, root=args.root, image_folder=args.image_folder, decode=args.decode, progress=progress
        )
    if args.json == "-":
        from .output import print_json

        print_json(report.to_json())
    else:
        render(report, console(), examples=args.examples)
        if is_stage_yaml(args.target) and (line := base_line(read_stage(args.target, root=args.root))):
            console().print(line)
    if args.json not in (None, "-"):
        from .._outputs import write_text

        write_text(args.json, json.dumps(report.to_json(), ensure_ascii=False, indent=1))
        note(f"wrote the report to {os.path.normpath(args.json)}")
    if args.write_exclude is not None:
        try:
            n = report.write_exclude(args.write_exclude)
        except OSError as e:
            if e.filename is None:  # a failed write() names no file: this one did
                e.filename = args.write_exclude
            raise
        note(f"wrote {n:,} bad record numbers to {os.path.normpath(args.write_exclude)}")
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS


def render(report: CheckReport, console: Any, *, examples: int = 3) -> None:
    """Print the per-dataset table and the first `examples` problems of each kind."""
    from rich.table import Table
    from rich.text import Text

    from ..check import KINDS
    from .output import cell, count

    counts = report.counts()
    kinds = [k for k in KINDS if k in counts]
    table = Table(title=f"fusion-fast check: {cell(Path(report.target).name)}", title_justify="left")
    table.add_column("dataset", overflow="fold")
    for col in ("records", "images", "problems"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("by kind", no_wrap=True)
    for d in report.datasets.values():
        table.add_row(cell(d.name), f"{d.records:,}", f"{d.images:,}", *_problem_cells(d.problems))
    layout = Counter(p.kind for p in report.problems if p.dataset not in report.datasets)
    if layout:
        table.add_row("(layout)", "", "", *_problem_cells(layout))
    console.print(table)
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in report.problems:
        by_kind[p.kind].append(p)
    for k in kinds:
        console.print(Text(f"{k}: {len(by_kind[k]):,}", style="bold"))
        for p in by_kind[k][:examples]:
            console.print(Text("  " + cell(describe(p))), soft_wrap=True)
    summary = (
        f"{count(report.records, 'record')} in {count(len(report.datasets), 'file')}"
        + (f", {count(report.decoded, 'image')} decoded" if report.decoded else "")
        + f" in {report.seconds:.2f} s: "
    )
    if report.clean:
        console.print(Text(summary + "no problems", style="green"))
    else:
        console.print(Text(summary + count(len(report.problems), "problem"), style="red"))


def _problem_cells(counts: Counter[str]) -> tuple[str, str]:
    """(total, one "kind n" line per kind in KINDS order); empty when there is nothing."""
    from ..check import KINDS

    if not counts:
        return "", ""
    by_kind = "\n".join(f"{k} {counts[k]:,}" for k in KINDS if counts[k])
    return f"{sum(counts.values()):,}", by_kind


def describe(p: Problem) -> str:
    """One problem on one line: where (file, record, id, byte), what, and the path concerned."""
    where = [Path(p.dataset).name] if p.dataset else []
    if p.record is not None:
        where.append(f"record {p.record}")
    if p.id is not None:
        where.append(f"id {p.id!r}")
    if p.offset is not None:
        where.append(f"byte {p.offset}")
    from .output import jsonl_hint

    detail = jsonl_hint(p.detail, p.dataset) if p.kind == "malformed_record" else p.detail
    text = " ".join(where) + ": " + detail if where else detail
    return text + (f" [{p.path}]" if p.path else "")
