"""`fusion-fast synth`: write a seeded, LLaVA-style annotation file of a given size (the generator the
demo and the benchmarks use)."""

from __future__ import annotations

import argparse
import os
import time

#: What `--help` says about the records.
_SHAPES = (
    "Records follow real FUSION / LLaVA data: about 60% with one image, 10% with several, 25% "
    "text-only and 5% video, multi-turn conversations, raw and escaped unicode, <image> tokens before or "
    "after the text. The same arguments always write the same bytes."
)


def _size(text: str) -> int:
    from ..synth import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"the number of records must be at least 0, not {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a seeded LLaVA-style .json or .jsonl file of a given size (test and benchmark data)",
        description="Write a seeded LLaVA-style annotation file: a JSON array when OUT ends in .json, JSON "
        "Lines when it ends in .jsonl. " + _SHAPES,
    )
    p.add_argument("out", metavar="OUT", help="the file to write: NAME.json (an array) or NAME.jsonl (lines)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="write at most this many bytes, within one record of it: e.g. 64MiB, 1.5GiB, 512k "
        "(default: 16MiB)",
    )
    amount.add_argument(
        "--records", type=_count, default=None, metavar="N", help="write exactly N records instead"
    )
    p.add_argument(
        "--seed", type=_count, default=0, metavar="S", help="seed of the generator (default: %(default)s)"
    )
    p.add_argument(
        "--indent",
        type=_count,
        default=4,
        metavar="N",
        help="indentation of a .json array's records, like FUSION's files (default: %(default)s)",
    )
    p.add_argument("--compact", action="store_true", help="a .json array on one line, without indentation")
    p.add_argument("--ascii", action="store_true", help="escape non-ASCII text as \\uXXXX")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import FusionFastError
    from ..synth import write_file
    from . import UsageError
    from .output import console, human_bytes
    from .output import count as plural

    out = os.fspath(args.out)
    if not out.endswith((".json", ".jsonl")):
        raise UsageError(f"{out}: the file name must end in .json (an array) or .jsonl (JSON Lines)")
    if os.path.isdir(out):
        raise UsageError(f"{out}: is a folder; give the name of the file to write")
    if os.path.exists(out) and not args.force:
        raise UsageError(f"{out}: exists already; pass --force to overwrite it")
    if not os.path.exists(out):
        from .args import check_writable

        check_writable(out, "OUT")
    size = args.size if args.size is not None or args.records is not None else 16 << 20
    started = time.perf_counter()
    # Written beside OUT under a temporary name (same suffix: it picks the format), then renamed: an
    # interrupted run leaves no half file behind.
    # A pipe or a device (`/dev/stdout`) is written into: renaming onto it would replace it.
    from .._outputs import rename_target

    target = rename_target(out)
    if target is None:
        tmp = out
    else:
        folder, name = os.path.split(target)
        stem, ext = os.path.splitext(name)
        tmp = os.path.join(folder, f".{stem}.{os.getpid()}.part{ext}")
    try:
        count = write_file(
            tmp,
            size=size if args.records is None else None,
            records=args.records,
            seed=args.seed,
            indent=None if args.compact else args.indent,
            ensure_ascii=args.ascii,
        )
        if target is not None:
            os.replace(tmp, target)
    except OSError as e:
        if target is not None:
            _remove(tmp)
        raise FusionFastError(f"cannot write: {e.strerror or e}", path=out) from None
    except BaseException:
        if target is not None:
            _remove(tmp)
        raise
    seconds = time.perf_counter() - started
    written = os.path.getsize(target) if target is not None else 0
    console().print(
        f"wrote {plural(count, 'record')} ({human_bytes(written)}, seed {args.seed}) to {out} "
        f"in {seconds:.2f} s",
        markup=False,
    )
    return 0


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
