"""Argument types and checks shared by the commands (light: no imports beyond the standard library)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _int(text: str, minimum: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, not {n}")
    return n


def non_negative_int(text: str) -> int:
    return _int(text, 0, "the value")


def positive_int(text: str) -> int:
    return _int(text, 1, "the value")


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**64 - 1."""
    n = _int(text, 0, "a seed")
    if n >= 1 << 64:
        raise argparse.ArgumentTypeError(f"a seed must be below 2**64, not {n}")
    return n


def check_writable(path: str, flag: str) -> None:
    """Fail now, before long work, when `path` cannot be written: its folder is missing or read-only,
    or it is a folder itself."""
    from . import UsageError

    if path == "-":
        # `-` reads as standard output, where the command prints its own results: a file named `-`
        # would be a surprise and mixing the two would be unreadable.
        raise UsageError(f"{flag} -: standard output is not supported here; give a file name")
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist; create it or choose another path")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {path}: file is not writable; choose another path")
    if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: folder {parent} is not writable; choose another path")


def existing_folder(text: str) -> str:
    """A folder that must exist (`--root`)."""
    if not os.path.isdir(text):
        what = "is a file, not a folder" if os.path.exists(text) else "no such folder"
        raise argparse.ArgumentTypeError(f"{text}: {what}")
    return text


def index_folder(text: str) -> str:
    """Where indexes are kept (`--index-dir`): created when missing, so only a file in the way is wrong."""
    p = Path(text)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == p else f"is under {part}, a file"
                raise argparse.ArgumentTypeError(f"{text}: {where}, not a folder")
            break
    return text


def check_not_input(path: str, flag: str, inputs: list[Path]) -> None:
    """Refuse to write an output over one of the command's own inputs (the YAML, a data file)."""
    from . import UsageError

    out = Path(path)
    if not out.exists():
        return
    for p in inputs:
        if p.exists() and os.path.samefile(out, p):
            raise UsageError(f"{flag} {path}: is an input of this command ({p}); choose another file")


def add_root_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--root DIR`: the folder relative paths in a stage YAML start from (an existing folder)."""
    parser.add_argument("--root", type=existing_folder, default=None, metavar="DIR", help=help)


def add_index_dir_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--index-dir DIR`: where indexes are kept instead of beside the data."""
    parser.add_argument("--index-dir", type=index_folder, default=None, metavar="DIR", help=help)
