"""`fusion-fast check`: report broken records, missing or corrupt images and layout mistakes.

Exit status: 0 clean, 1 problems found, 2 usage error (bad arguments, a missing or unknown target,
an unreadable stage YAML).
"""

from __future__ import annotations

import argparse
import json

from ..check import TargetError, run_check
from ..errors import MixtureError
from .output import console, error_console

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="find broken records, missing or corrupt images and layout mistakes before training",
        description="Check every record of a stage YAML's data files, a .json/.jsonl file or a folder. "
        "Exit status: 0 clean, 1 problems found, 2 usage error.",
    )
    p.add_argument(
        "target", metavar="TARGET", help="a stage YAML, a .json/.jsonl file or a folder (playground)"
    )
    p.add_argument(
        "--root", default=None, help="folder that relative paths in a YAML start from (default: cwd)"
    )
    p.add_argument(
        "--image-folder",
        default=None,
        metavar="DIR",
        help="where relative image paths start, for datasets without their own image_folder",
    )
    p.add_argument("--decode", action="store_true", help="also open and decode every image (Pillow)")
    p.add_argument("--json", default=None, metavar="REPORT.json", help="write every problem to this file")
    p.add_argument(
        "--write-exclude",
        default=None,
        metavar="FILE",
        help="write the bad record numbers per data file, for a stage entry's `exclude: FILE`",
    )
    p.add_argument(
        "--examples", type=int, default=3, metavar="N", help="examples shown per kind (default: 3)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    err = error_console()
    try:
        report = run_check(
            args.target, root=args.root, image_folder=args.image_folder, decode=args.decode, progress=True
        )
    except (TargetError, MixtureError) as e:  # nothing to check: the target or its stage YAML is unusable
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        return EXIT_USAGE
    report.render(console(), examples=args.examples)
    if args.json is not None:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, ensure_ascii=False, indent=1)
    if args.write_exclude is not None:
        n = report.write_exclude(args.write_exclude)
        err.print(f"wrote {n:,} bad record numbers to {args.write_exclude}")
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS
