"""The `fusion-fast` command line. Each subcommand lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator

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


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (`kill`, a batch scheduler ending a job) raises `SystemExit(143)` instead of killing the
    process outright, so that a build in progress stops the way Ctrl-C stops it: temporary files
    removed, any previous index kept."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; an embedding program keeps its own
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except FusionFastError as e:
        from .output import error_console

        error_console().print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
