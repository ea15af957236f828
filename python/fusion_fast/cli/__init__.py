"""The `fusion-fast` command line. Each subcommand lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import FusionFastError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ("index", "demo", "check", "mix", "prepare", "bench")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fusion-fast",
        description="Fast, memory-mapped indexes and data tooling for FUSION / LLaVA-style training data.",
    )
    parser.add_argument("--version", action="version", version=f"fusion-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FusionFastError as e:
        from .output import error_console

        error_console().print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
