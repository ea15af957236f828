"""How the command line writes: tables, progress and errors, on a terminal and in a log.

On a terminal tables fit the window and long work shows a live bar. In a file or a pipe (a batch job's
log, `| tee`, CI) tables keep their natural width (a cell is never cut to `…`) and long work prints one
plain progress line every `FUSION_FAST_PROGRESS_SECONDS` (default 10). User-supplied text (file names,
dataset names, record text) is never read as console markup or emoji codes.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: Width given to rich when the output is not a terminal: wide enough that no table is ever cut.
LOG_WIDTH = 1 << 20
#: Seconds between progress lines in a log.
PROGRESS_SECONDS = 10.0


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _console(stderr: bool) -> Console:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here, the status of a failed command; raised instead, the
            # reader going away ends the command with 141 like every other write to a closed pipe.
            raise BrokenPipeError(errno.EPIPE, "the output pipe was closed by its reader")

    tty = is_terminal(sys.stderr if stderr else sys.stdout)
    return _Console(
        stderr=stderr,
        highlight=False,
        markup=False,
        emoji=False,
        width=None if tty else LOG_WIDTH,
        soft_wrap=not tty,
    )


def console() -> Console:
    """Standard output (tables, results)."""
    return _console(stderr=False)


def error_console() -> Console:
    """Standard error (progress, notes)."""
    return _console(stderr=True)


def table(title: str | None = None, **kwargs: Any) -> Any:
    """A rich Table that folds long cells on a terminal instead of cutting them."""
    from rich.table import Table

    return Table(title=title, **kwargs)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def count(n: int, word: str, plural: str | None = None) -> str:
    """`n word` with the word in the singular for one and the plural otherwise: `1 problem`,
    `2 problems`, `0 files`; `plural` for words not made plural by adding an s."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def cell(text: str) -> str:
    """`text` for one table cell or one output line: characters that would break the line or be
    invisible (newline, tab, other control characters, bytes of a file name that is not UTF-8) are shown
    escaped as Python writes them (`\\n`, `\\x1b`; such a byte as `\\xe9`), so one name stays on one row."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif "\udc80" <= c <= "\udcff":  # a byte of a file name that is not UTF-8: shown as that byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(ascii(c)[1:-1])
    return "".join(out)


#: The hint the index builder gives for a .json file whose top-level value is not an array.
JSONL_HINT = "A file with one JSON record per line is JSON Lines: name it .jsonl"
#: How common non-JSON files start, to say what was found instead.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ", "xz-compressed data"),
    (b"PAR1", "a Parquet file"),
)


def jsonl_hint(message: str, path: str | os.PathLike[str] | None) -> str:
    """`message` with the "name it .jsonl" hint kept only when the file looks like JSON Lines (its first
    line parses as a JSON value); otherwise the hint says what the file starts with instead."""
    if JSONL_HINT not in message or path is None:
        return message
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return message
    first = head.lstrip().split(b"\n", 1)[0].strip()
    try:
        json.loads(first)
        return message
    except ValueError:
        pass
    return message.replace(JSONL_HINT, _found(head))


def _found(head: bytes) -> str:
    text = head.lstrip()
    for magic, what in _MAGIC:
        if text.startswith(magic):
            return f"This is not JSON: the file holds {what}"
    if text[:1] in (b"{", b'"') or text[:1].isdigit() or text[:1] in (b"-", b"t", b"f", b"n"):
        try:
            kind = type(json.loads(head)).__name__ if len(head) < (1 << 16) else None
        except ValueError:
            kind = None
        names = {"dict": "an object", "str": "a string", "int": "a number", "float": "a number"}
        if kind is not None:
            return f"It is a single JSON value ({names.get(kind, kind)}); the records must be in an array"
    try:
        head.decode("utf-8")
        binary = False
    except UnicodeDecodeError as e:
        binary = e.start < len(head) - 3  # not just a character cut at the end of what was read
    if binary or b"\x00" in head:
        return "This is not JSON: the file is binary (it starts with bytes " + text[:8].hex(" ") + ")"
    line = text.split(b"\n", 1)[0][:40].decode("utf-8", "replace")
    return f"This is not JSON: its first line starts with {line!r}"


def print_json(value: Any) -> None:
    """`--json` output: one JSON document on standard output."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=1) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A line on standard error for the person watching (what was done, where things went)."""
    print(message, file=sys.stderr, flush=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_interval() -> float:
    text = os.environ.get("FUSION_FAST_PROGRESS_SECONDS")
    try:
        return max(0.0, float(text)) if text else PROGRESS_SECONDS
    except ValueError:
        return PROGRESS_SECONDS


class Progress:
    """Progress of long work, on standard error.

    `task(what, total, unit)` starts one piece ("bytes" or "records"); `update(task, done)` /
    `advance(task, n)` move it; `done(task)` ends it. On a terminal: a transient rich bar, shown only
    for pieces of at least `min_total`. Otherwise: a line such as
    `indexing a.json: 1.2 GiB of 4.0 GiB (30%), 410.0 MiB/s, about 7 s left` at most every
    `interval` seconds, first after one interval, so short work prints nothing.
    """

    def __init__(self, *, interval: float | None = None, terminal: bool | None = None) -> None:
        self.interval = progress_interval() if interval is None else interval
        self.terminal = is_terminal(sys.stderr) if terminal is None else terminal
        self._tasks: dict[int, _Task] = {}
        self._next = 0
        self._bar: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def task(self, what: str, total: int, unit: str = "bytes", *, bar: bool = True) -> int:
        """Start a piece of work; `bar=False` keeps a short one off the terminal (logs still get lines
        when it runs past an interval)."""
        self._next += 1
        t = _Task(what, total, unit)
        if self.terminal and bar:
            if self._bar is None:
                self._bar = _rich_bar()
                self._bar.start()
            t.rich_id = self._bar.add_task(what, total=total, amount=t.amounts())
        self._tasks[self._next] = t
        return self._next

    def update(self, task: int | None, done: int) -> None:
        t = self._tasks.get(task) if task is not None else None
        if t is None:
            return
        t.done = done
        if t.rich_id is not None:
            self._bar.update(t.rich_id, completed=done, amount=t.amounts())
            return
        if self.terminal:
            return
        now = time.monotonic()
        if now - t.last_line >= self.interval:
            t.last_line = now
            print(t.line(now), file=sys.stderr, flush=True)

    def advance(self, task: int | None, n: int) -> None:
        t = self._tasks.get(task) if task is not None else None
        if t is not None:
            self.update(task, t.done + n)

    def done(self, task: int | None) -> None:
        t = self._tasks.pop(task, None) if task is not None else None
        if t is not None and t.rich_id is not None:
            self._bar.remove_task(t.rich_id)


class _Task:
    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.rich_id: Any = None

    def _amount(self, n: float) -> str:
        if self.unit == "bytes":
            return human_bytes(n)
        return count(int(n), self.unit[:-1]) if self.unit.endswith("s") else f"{int(n):,} {self.unit}"

    def amounts(self) -> str:
        return f"{self._amount(self.done)} of {self._amount(self.total)}"

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.what}: {self.amounts()}"]
        if self.total > 0:
            parts[0] += f" ({self.done / self.total:.0%})"
        rate_text = f"{human_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:,.0f} {self.unit}/s"
        parts.append(rate_text)
        if rate > 0 and self.total > self.done:
            parts.append(f"about {human_seconds((self.total - self.done) / rate)} left")
        return ", ".join(parts)


def _rich_bar() -> Any:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[amount]}", markup=False),
        TimeRemainingColumn(),
        console=error_console(),
        transient=True,
    )
