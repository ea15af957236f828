"""The `fusion-fast` command line. Each subcommand lives in its own module with a `register`.

Command modules import only argparse at module level: their heavy imports (numpy, polars, rich's
tables, torch) happen inside the command that needs them, so `--help` and a cached `index` start fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ..errors import FusionFastError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ("index", "demo", "check", "mix", "prepare", "bench", "synth")

#: Exit statuses, the same for every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the work failed, or `check` found problems
EXIT_USAGE = 2  # bad arguments, a path that does not exist, an unusable stage YAML or output path
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (a batch system's time limit or `scancel`)
EXIT_PIPE_CLOSED = 141  # the reader of the output went away (`| head`), as other Unix tools report it

EPILOG = """\
exit status (every command):
  0    success
  1    the work failed, or `check` found problems
  2    usage error: bad arguments, a path that does not exist, an unusable stage YAML or output path
  130  interrupted (Ctrl-C); 143 for SIGTERM; temporary files are removed
  141  the output pipe was closed by its reader (`| head`); nothing more is printed

Errors are printed as one `error:` line; add --debug (or set FUSION_FAST_DEBUG=1) to see the traceback.
Output sent to a file or a pipe is never cut: tables keep their full width and long work prints a
progress line every FUSION_FAST_PROGRESS_SECONDS (default 10) seconds.
"""


class UsageError(Exception):
    """A mistake in what was asked (exit status 2): the message says what and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that it unwinds (and cleans up) as for Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fusion-fast",
        description="Fast, memory-mapped indexes and data tooling for FUSION / LLaVA-style training data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fusion-fast {__version__}")
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for command in sub.choices.values():
        _add_debug(command, default=argparse.SUPPRESS)
        if command.epilog is None:
            command.epilog = (
                "exit status: 0 ok, 1 failed, 2 usage error, 130 interrupted (see fusion-fast --help)"
            )
    return parser


def _add_debug(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of an error (also: FUSION_FAST_DEBUG=1)",
    )


#: How the `error:` line names standard output when writing to it fails (a full disk, an I/O error).
STDOUT = "standard output"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see EPILOG)."""
    debug = os.environ.get("FUSION_FAST_DEBUG", "") not in ("", "0")
    stdout = sys.stdout
    named = _NamedStdout(stdout)
    sys.stdout = cast(IO[str], named)
    try:
        with _sigterm_unwinds():
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                # --help, --version and usage errors end here. argparse ignores a failed write to
                # standard output, and what it wrote may still be buffered: either failure is an
                # error like any other.
                named.flush()
                named.raise_failure()
                raise
            debug = debug or bool(getattr(args, "debug", False))
            status = int(args.func(args) or 0)
            named.flush()
            named.raise_failure()
            return status
    except SystemExit:
        raise
    except BaseException as e:
        return _fail(e, debug)
    finally:
        sys.stdout = stdout


class _NamedStdout:
    """Standard output whose write errors name it: an `OSError` from writing or flushing (other than
    the reader closing a pipe) gets `filename` "standard output", so the `error:` line says where the
    write failed instead of a bare "No space left on device" that could be any file."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        #: The first write failure, kept in case the writer ignored it (argparse's --help does).
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise self._failed(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise self._failed(e) from None

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _failed(self, e: OSError) -> OSError:
        named = _named(e)
        if self.failure is None:
            self.failure = named
        return named

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _named(e: OSError) -> OSError:
    if e.filename is not None or isinstance(e, BrokenPipeError) or e.errno == errno.EPIPE:
        return e
    return OSError(e.errno, e.strerror or str(e), STDOUT)


def _fail(e: BaseException, debug: bool) -> int:
    """Print one `error:` line for `e` (and its traceback with `debug`); returns the exit status."""
    if isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE):
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    if isinstance(e, KeyboardInterrupt):
        if debug:
            _traceback(e)
        terminated = isinstance(e, Terminated)
        _error_line("terminated (SIGTERM)" if terminated else "interrupted")
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    if debug:
        _traceback(e)
    if isinstance(e, OSError) and (e.filename is None or e.filename == STDOUT):
        _silence_stdout()  # the interpreter's last flush of what is left would fail again
    status, message = describe(e)
    _error_line(message, label="error:")
    return status


def describe(e: BaseException) -> tuple[int, str]:
    """(exit status, the `error:` message) for an exception that ends a command."""
    from ..errors import FusionFastError, FusionFastIOError, MixtureError
    from ..indexing import TargetError

    if isinstance(e, UsageError):
        return EXIT_USAGE, str(e)
    if isinstance(e, (TargetError, MixtureError)):
        return EXIT_USAGE, _once(e)
    if isinstance(e, FusionFastIOError):
        return EXIT_FAILED, _once(e)
    if isinstance(e, FusionFastError):
        from .output import jsonl_hint

        return EXIT_FAILED, jsonl_hint(_once(e), e.path)
    if isinstance(e, OSError):
        return os_error(e)
    if isinstance(e, MemoryError):
        return EXIT_FAILED, "out of memory"
    return EXIT_FAILED, (
        f"unexpected {type(e).__name__}: {e} (this is a bug in fusion-fast: please report it with the "
        "output of the same command run with --debug)"
    )


def _once(e: FusionFastError) -> str:
    """The error's text with its path said once: messages that already start with the path (as given
    or made absolute) are not prefixed with it again."""
    text = str(e)
    if e.path is None or e.line is not None:
        return text
    head, sep, rest = e.message.partition(": ")
    if sep and os.path.abspath(head) == os.path.abspath(e.path):
        return f"{head}: {rest}"
    return text


def os_error(e: OSError) -> tuple[int, str]:
    """A file-system error as (exit status, message naming the path and what to do)."""
    name = e.filename if e.filename is not None else None
    what = os.fspath(name) if name is not None else None
    reason = e.strerror or str(e)
    if isinstance(e, FileNotFoundError):
        return EXIT_USAGE, f"{what}: no such file or folder; check the path" if what else reason
    if isinstance(e, IsADirectoryError):
        return EXIT_USAGE, f"{what}: is a folder; give a file here" if what else reason
    if isinstance(e, NotADirectoryError):
        return EXIT_USAGE, f"{what}: a part of this path is a file, not a folder" if what else reason
    if isinstance(e, PermissionError):
        return EXIT_USAGE, f"{what}: permission denied; check who may read or write it" if what else reason
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        # Every file the commands write is named in its error; one without a name is standard output.
        where = what or "standard output"
        return EXIT_FAILED, f"{where}: no space left on the device; free some or write elsewhere"
    return EXIT_FAILED, f"{what}: {reason}" if what else reason


def _error_line(message: str, *, label: str = "") -> None:
    """`error: message`, or just `message` with no label (an interruption is not a mistake)."""
    try:
        if label and sys.stderr.isatty():
            sys.stderr.write(f"\x1b[1;31m{label}\x1b[0m {message}\n")
        else:
            sys.stderr.write(f"{label} {message}\n" if label else f"{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _traceback(e: BaseException) -> None:
    import traceback

    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)


def _silence_stdout() -> None:
    """After the reader of standard output went away: point it at /dev/null so that the interpreter's
    final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread, so that `finally` blocks and the index build's
    interrupt handling run exactly as they do for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
